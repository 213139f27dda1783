"""Onboarding's pure parts, without converting anything: what MODEL names, the option rules, the
checks that refuse a conversion before it starts, the publish-once store and the progress lines."""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import require_module

require_module("tqdm", "engine")

from ovllm_engine.config import ConfigError, EnvSettings  # noqa: E402
from ovllm_engine.onboard import options, store  # noqa: E402
from ovllm_engine.onboard.prepare import check_disk_space, check_source, conversion_key, source_precision  # noqa: E402
from ovllm_engine.onboard.progress import LogProgress, Steps  # noqa: E402
from ovllm_engine.onboard.source import LocalModel, ModelError, check_hub_id, local_directory  # noqa: E402


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


def hf_dir(tmp_path: Path, **config) -> Path:
    directory = tmp_path / "model"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2", **config}))
    return directory


# --- options -----------------------------------------------------------------------------------

def test_environment_contract_picks_the_weight_format():
    assert options.resolve(parse(), EnvSettings(quantized_weights=True)).weight_format == "int8"
    assert options.resolve(parse(), EnvSettings(quantized_weights=False)).weight_format is None
    assert options.resolve(parse(), EnvSettings()).weight_format is None
    # an explicit flag wins over the environment
    explicit = options.resolve(parse("--weight-format", "fp16"), EnvSettings(quantized_weights=True))
    assert explicit.weight_format == "fp16"


def test_int4_defaults_and_labels():
    resolved = options.resolve(parse("--weight-format", "int4"), EnvSettings())
    assert (resolved.group_size, resolved.ratio, resolved.sym) == (128, 1.0, False)
    assert resolved.label() == "int4-g128-r1-asym"
    assert options.resolve(parse("--weight-format", "int4", "--group-size", "64", "--ratio", "0.8", "--sym"),
                           EnvSettings()).label() == "int4-g64-r0.8-sym"
    assert options.resolve(parse("--weight-format", "int8", "--sym"), EnvSettings()).label() == "int8-sym"


@pytest.mark.parametrize("argv, message", [
    (("--group-size", "64"), "--group-size applies to --weight-format int4 only"),
    (("--weight-format", "int8", "--ratio", "0.5"), "--ratio applies to --weight-format int4 only"),
    (("--weight-format", "fp16", "--sym"), "--sym applies to --weight-format int8 or int4 only"),
    (("--weight-format", "int4", "--ratio", "1.5"), "--ratio 1.5 must be in (0, 1]"),
    (("--weight-format", "int4", "--group-size", "0"), "--group-size 0 must be positive"),
])
def test_option_combinations_that_make_no_sense_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        options.resolve(parse(*argv), EnvSettings())


def test_conversion_flags_given_lists_only_what_was_set():
    assert options.conversion_flags_given(parse()) == []
    assert options.conversion_flags_given(parse("--weight-format", "int8", "--trust-remote-code")) == [
        "--weight-format", "--trust-remote-code"]


# --- what MODEL names --------------------------------------------------------------------------

def test_model_argument_kinds(tmp_path):
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")
    assert local_directory(str(ir)).is_ir
    hf = hf_dir(tmp_path)
    found = local_directory(str(hf))
    assert (found.is_ir, found.name) == (False, "model")
    assert local_directory("Qwen/Qwen2.5-0.5B") is None  # not a path: a hub id
    check_hub_id("Qwen/Qwen2.5-0.5B")


def test_model_arguments_that_name_nothing_usable(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds neither OpenVINO IR .*, a Hugging Face model .* nor a GGUF file"):
        local_directory(str(empty))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        local_directory(str(tmp_path / "file.bin"))
    with pytest.raises(ModelError, match="no such file or directory"):
        local_directory(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="neither a directory nor a valid hub id"):
        check_hub_id("not a--valid id!")


# --- checks before converting ------------------------------------------------------------------

def test_weights_must_be_there(tmp_path):
    directory = hf_dir(tmp_path)
    with pytest.raises(ModelError, match="has a config.json but no weights"):
        check_source(directory, options.ConversionOptions("fp32"))
    (directory / "model.safetensors").write_bytes(b"")
    check_source(directory, options.ConversionOptions("fp32"))


def test_remote_code_needs_consent(tmp_path):
    directory = hf_dir(tmp_path, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (directory / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="--trust-remote-code"):
        check_source(directory, options.ConversionOptions("fp32"))
    check_source(directory, options.ConversionOptions("fp32", trust_remote_code=True))


@pytest.mark.parametrize("model_type, reason", [
    ("phimoe", "greedy tokens that differ from transformers'"),
    ("mpt", "greedy tokens that differ from transformers'"),
    ("mamba", "a state-space model"),
    ("falcon_mamba", "a state-space model"),
])
def test_architectures_that_cannot_work_are_refused_in_one_line(tmp_path, model_type, reason):
    directory = hf_dir(tmp_path, model_type=model_type)
    (directory / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as refused:
        check_source(directory, options.ConversionOptions("fp32"))
    line = str(refused.value)
    assert "\n" not in line and f"ovllm refuses the architecture {model_type!r}: " in line and reason in line


def test_tested_architectures_have_a_test_model_and_a_readme_row():
    from conftest import ROOT
    from ovllm_engine.onboard.architectures import TESTED, UNSERVABLE

    require_module("transformers", "convert")
    from ovllm_engine.testmodels import RECIPES

    assert sorted(name.removeprefix("tiny-") for name in RECIPES if name.startswith("tiny-")) == sorted(TESTED)
    assert not set(TESTED) & set(UNSERVABLE)
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Architectures"):readme.index("## Run on a cluster")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    listed = sorted(name.strip(" `") for row in rows[1:] for name in row.split(","))  # [0]: the header
    assert listed == sorted(TESTED)


def test_int4_group_must_divide_the_model_widths(tmp_path):
    directory = hf_dir(tmp_path, hidden_size=64, intermediate_size=128)
    (directory / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="hidden_size 64: use --group-size 64"):
        check_source(directory, options.ConversionOptions("int4", group_size=128, ratio=1.0))
    check_source(directory, options.ConversionOptions("int4", group_size=32, ratio=1.0))
    check_source(directory, options.ConversionOptions("int4", group_size=-1, ratio=1.0))  # per channel
    odd = hf_dir(tmp_path / "odd", hidden_size=72, intermediate_size=100)
    (odd / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="use --weight-format int8"):
        check_source(odd, options.ConversionOptions("int4", group_size=128, ratio=1.0))


def test_damaged_config_is_reported(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json cannot be read"):
        source_precision(directory)
    (directory / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="names no model_type"):
        source_precision(directory)


def test_source_precision(tmp_path):
    assert source_precision(hf_dir(tmp_path / "a", dtype="bfloat16")) == "fp16"
    assert source_precision(hf_dir(tmp_path / "b", torch_dtype="float16")) == "fp16"
    assert source_precision(hf_dir(tmp_path / "c", dtype="float32")) == "fp32"


def test_disk_space_is_checked_before_converting(tmp_path):
    directory = hf_dir(tmp_path, dtype="bfloat16")
    free = shutil.disk_usage(tmp_path).free
    # A sparse weights file as large as the free space: its conversion cannot fit, yet it uses no disk.
    with open(directory / "model.safetensors", "wb") as weights:
        weights.truncate(free)
    with pytest.raises(ModelError, match="not enough disk space in .* needed, .* free"):
        check_disk_space(directory, tmp_path / "cache", options.ConversionOptions("fp16"))
    with open(directory / "model.safetensors", "wb") as weights:
        weights.truncate(1000)
    check_disk_space(directory, tmp_path / "cache", options.ConversionOptions("int4", group_size=128, ratio=1.0))


def test_cache_key_follows_source_and_options(tmp_path):
    directory = hf_dir(tmp_path)
    local = LocalModel(directory, False, "model")
    int8 = options.ConversionOptions("int8")
    key = conversion_key(local, int8)
    assert conversion_key(local, int8) == key
    assert conversion_key(local, options.ConversionOptions("int8", sym=True)) != key
    (directory / "model.safetensors").write_bytes(b"new weights")
    assert conversion_key(local, int8) != key, "a changed model directory must not reuse an old conversion"
    hub = LocalModel(directory, False, "org/m", "org/m", "a" * 40)
    assert conversion_key(hub, int8) != conversion_key(LocalModel(directory, False, "org/m", "org/m", "b" * 40), int8)


# --- publish once ------------------------------------------------------------------------------

def _build_slowly(target: str, counter: str) -> None:
    def build(tmp: Path) -> None:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (tmp / "done").write_text("yes")

    store.publish_once(Path(target), build, lambda path: (path / "done").is_file())


def test_concurrent_builders_build_once(tmp_path):
    target, counter = tmp_path / "cache" / "entry", tmp_path / "builds.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_build_slowly, args=(str(target), str(counter))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(counter.read_text().split()) == 1
    assert (target / "done").read_text() == "yes"
    assert [path.name for path in target.parent.iterdir() if ".tmp-" in path.name] == []


def test_failed_build_leaves_nothing_and_stale_builds_are_removed(tmp_path):
    target = tmp_path / "entry"
    stale = tmp_path / ".entry.tmp-dead"
    stale.mkdir()
    (stale / "openvino_model.xml").write_text("half")

    def failing(tmp: Path) -> None:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.publish_once(target, failing, Path.is_dir)
    assert not target.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".entry.lock"]


def test_published_files_are_readable_by_others(tmp_path):
    target = tmp_path / "entry"

    def build(tmp: Path) -> None:
        (tmp / "weights").write_text("w")
        (tmp / "weights").chmod(0o600)

    store.publish_once(target, build, Path.is_dir)
    assert (target.stat().st_mode & 0o777, (target / "weights").stat().st_mode & 0o777) == (0o755, 0o644)


# --- progress ----------------------------------------------------------------------------------

def test_progress_lines_when_not_on_a_terminal(caplog, monkeypatch):
    monkeypatch.setenv("OVLLM_PROGRESS_INTERVAL", "0.1")
    caplog.set_level(logging.INFO, logger="ovllm.progress")
    bar = LogProgress(total=2_000_000, desc="Downloading", unit="B", unit_scale=True)
    bar.update(1_000_000)
    time.sleep(0.15)
    bar.update(500_000)
    bar.update(500_000)
    bar.close()
    lines = [record.getMessage() for record in caplog.records]
    # a line between start and end, once the interval has passed: percent, amounts, elapsed time
    assert "Downloading: 75% (1.5 MB/2.0 MB), 0s elapsed" in lines
    assert lines[-1].startswith("Downloading: 100% (2.0 MB/2.0 MB)")


def test_steps_name_each_step(caplog):
    caplog.set_level(logging.INFO, logger="ovllm.progress")
    with Steps("converting m", ["exporting", "checking"]) as steps:
        with steps.step("exporting"):
            pass
        with steps.step("checking"):
            pass
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("converting m: step 1/2, exporting: 0% (0/2)")
    assert any(line.startswith("converting m: step 2/2, checking: 50% (1/2)") for line in lines)
    assert lines[-1].startswith("converting m: step 2/2, checking: 100% (2/2)")
