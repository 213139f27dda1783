"""From what the user named to an OpenVINO IR directory: find or download the model, and convert a
Hugging Face model at most once per cache (or --output) directory.

The cache lives under $HF_HOME/ovllm (or DOWNLOAD_DIR/ovllm); an entry is named after the source,
the weight format and a key over everything that decides its bytes: the source (hub id and commit,
or a local directory's path and file sizes and times), the conversion options and the versions of
the converting libraries. An entry is complete when it holds `ovllm-conversion.json`, written last
inside the temporary directory that is then renamed into place (see store.py).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import shutil
import signal
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from ovllm_engine import __version__, gguf_file
from ovllm_engine.config import QUANTIZED_WEIGHTS, EnvSettings
from ovllm_engine.onboard import architectures, from_gguf, tokenizer_check
from ovllm_engine.onboard import options as conversion_options
from ovllm_engine.onboard.options import ConversionOptions
from ovllm_engine.onboard.progress import format_bytes, format_duration
from ovllm_engine.onboard.source import (
    IR_MODEL_FILE,
    LocalModel,
    ModelError,
    check_hub_id,
    download,
    is_ir_dir,
    local_directory,
)
from ovllm_engine.onboard.store import directory_size, lock_path, publish_once

log = logging.getLogger("ovllm.onboard")

MARKER = "ovllm-conversion.json"
# Libraries whose versions change what a conversion writes: part of every cache key.
CONVERTER_LIBRARIES = ("optimum-intel", "optimum", "transformers", "torch", "nncf", "openvino", "openvino-tokenizers")
RECIPE_VERSION = 1  # bump when ovllm changes how it converts
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ConversionReported(ModelError):
    """The conversion process already logged its error line; nothing more to say."""


def prepare(model: str, args, settings: EnvSettings, output: Path | None = None,
            isolate: bool = False, serve_gguf: bool = False) -> LocalModel:
    """Return the OpenVINO IR directory to serve for MODEL, downloading and converting as needed.

    isolate: convert in a child process, so that a server does not keep torch's memory afterwards.
    serve_gguf: a GGUF file is returned as it is (GenAI serves it) unless a weight format is asked for or
    it holds Q4_1 weights (then GenAI's graph of it with exact zero points, built once; see from_gguf.py).
    """
    gguf_name = getattr(args, "gguf_file", None)
    local = local_directory(model, gguf_name)
    if local is None:
        check_hub_id(model)
        local = download(model, args.revision, args.download_dir, gguf_name)
    elif args.revision:
        log.warning("--revision %s is ignored: %s is a local directory", args.revision, model)
    if local.is_ir:
        ignored = conversion_options.conversion_flags_given(args)
        if settings.quantized_weights is not None:
            ignored.append(QUANTIZED_WEIGHTS)
        if ignored:
            log.warning("%s ignored: %s is already OpenVINO IR, used as it is", ", ".join(ignored), local.path)
        return _copy_ir(local, output) if output else local

    if local.is_gguf:
        try:
            info = gguf_file.check_servable(local.path)
        except gguf_file.GGUFError as exc:
            raise ModelError(str(exc)) from None
        options = conversion_options.resolve_for_gguf(args, settings)
        if options.weight_format == "int4" and options.group_size != -1:
            _check_int4_groups(info.as_config(), options.group_size)
        if serve_gguf and options.weight_format is None and "Q4_1" not in info.tensor_types:
            if "Q4_K" in info.tensor_types:
                log.warning("%s holds Q4_K weights: OpenVINO GenAI 2026.4 rounds their block minimums to integer "
                            "zero points, so it computes slightly different weights than the file's", local.path)
            return local
        # Q4_1 weights: GenAI's graph of the file is corrected once (exact zero points, see from_gguf.py)
        # and cached like a conversion; the engine extra suffices.
    else:
        options = conversion_options.resolve(args, settings)
        if options.weight_format is None:
            options = replace(options, weight_format=source_precision(local.path))
        check_source(local.path, options)
    key = conversion_key(local, options)
    target = output or cache_root(args.download_dir) / f"{_slug(local)}--{_label(local, options)}--{key[:12]}"
    converted = replace(local, path=target, is_ir=True)
    if _reuse(target, key):
        return converted
    _check_free(target)
    if not _genai_only(local, options):
        _require_converter()
    check_disk_space(local.path, target.parent, options)
    metadata = {"key": key, "source": local.repo_id or str(local.path), "commit": local.commit,
                "options": asdict(options), "versions": converter_versions(), "ovllm": __version__}
    if isolate:
        _convert_in_child(target, local, options, metadata)
    else:
        convert_into(target, local, options, metadata)
    return converted


def _genai_only(local: LocalModel, options: ConversionOptions) -> bool:
    """A GGUF written as it is: GenAI's own graph and tokenizer (from_gguf.py), no torch."""
    return local.is_gguf and options.weight_format is None


def _label(local: LocalModel, options: ConversionOptions) -> str:
    return "gguf-exact" if _genai_only(local, options) else options.label()


def _reuse(target: Path, key: str) -> bool:
    if not is_converted(target):
        return False
    made = json.loads((target / MARKER).read_text())
    if made.get("key") != key:
        raise ModelError(f"{target} already holds a conversion of {made.get('source')} "
                         f"({made.get('options', {}).get('weight_format')}) with other settings: "
                         "remove it or choose another --output")
    log.info("nothing to convert: %s was converted %s in %s (%s on disk)", target, made.get("converted_at"),
             format_duration(made.get("seconds", 0)), format_bytes(made.get("size_bytes", 0)))
    return True


def _check_free(target: Path) -> None:
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ModelError(f"{target} exists and holds something other than an ovllm conversion: "
                         "remove it or choose another --output")


def is_converted(target: Path) -> bool:
    return (target / MARKER).is_file() and is_ir_dir(target)


def cache_root(download_dir: str | None) -> Path:
    if download_dir:
        return Path(download_dir).expanduser().resolve() / "ovllm"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "ovllm"


def converter_versions() -> dict[str, str]:
    return installed_versions(CONVERTER_LIBRARIES)


def installed_versions(names) -> dict[str, str]:
    """Each distribution's installed version, or "absent"."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def conversion_key(local: LocalModel, options: ConversionOptions) -> str:
    if local.repo_id:
        identity = {"repo": local.repo_id, "commit": local.commit}
    else:
        identity = {"dir": str(local.path), "files": _fingerprint(local.path)}
    material = {"source": identity, "options": asdict(options), "versions": converter_versions(),
                "recipe": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _fingerprint(root: Path) -> list:
    """Each file's path, size and modification time: a changed model gets a new key, without
    reading gigabytes of weights to hash them."""
    if root.is_file():
        stat = root.stat()
        return [[root.name, stat.st_size, stat.st_mtime_ns]]
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files.append([str(relative), stat.st_size, stat.st_mtime_ns])
    return files


def _slug(local: LocalModel) -> str:
    return (local.repo_id or local.path.name).replace("/", "--")


def _read_config(hf_dir: Path) -> dict:
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{hf_dir}/config.json cannot be read ({exc}): the model directory is damaged") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{hf_dir}/config.json names no model_type: it is not a transformers model config")
    return config


def source_precision(hf_dir: Path) -> str:
    """The precision the weights are stored in: fp32, or fp16 for float16 and bfloat16 sources."""
    config = _read_config(hf_dir)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return "fp16" if dtype in ("float16", "bfloat16") else "fp32"


def check_source(hf_dir: Path, options: ConversionOptions) -> None:
    """Refuse what would fail minutes into a conversion, before anything heavy is loaded."""
    config = _read_config(hf_dir)
    if not any(path.suffix in WEIGHT_FILE_SUFFIXES for path in hf_dir.iterdir()):
        raise ModelError(f"{hf_dir} has a config.json but no weights (*.safetensors or *.bin) and no OpenVINO IR "
                         f"({IR_MODEL_FILE}): the download or copy is incomplete")
    if config["model_type"] in architectures.UNSERVABLE:
        raise ModelError(f"{hf_dir}: ovllm refuses the architecture {config['model_type']!r}: "
                         f"{architectures.UNSERVABLE[config['model_type']]}")
    if config.get("auto_map") and not options.trust_remote_code:
        raise ModelError(f"{hf_dir} needs its own Python code (auto_map in config.json) to load: "
                         "pass --trust-remote-code if you trust its authors")
    if options.weight_format == "int4" and options.group_size != -1:
        _check_int4_groups(config, options.group_size)


def _check_int4_groups(config: dict, group_size: int) -> None:
    # int4 groups run along each weight's input channels: the hidden and intermediate sizes.
    widths = {}
    for names in (("hidden_size", "n_embd", "d_model"), ("intermediate_size", "n_inner", "ffn_dim")):
        for name in names:
            if isinstance(config.get(name), int):
                widths[name] = config[name]
                break
    uneven = {name: width for name, width in widths.items() if width % group_size}
    if not uneven:
        return
    fitting = [size for size in (128, 64, 32, 16) if all(width % size == 0 for width in widths.values())]
    hint = f"use --group-size {fitting[0]}" if fitting else "use --weight-format int8"
    described = ", ".join(f"{name} {width}" for name, width in uneven.items())
    raise ModelError(f"int4 with --group-size {group_size} needs weights whose input width is a multiple of it, "
                     f"but this model has {described}: {hint}")


def check_disk_space(hf_dir: Path, where: Path, options: ConversionOptions) -> None:
    """Refuse a conversion that cannot fit: the exported IR and, when compressing, its compressed copy
    exist side by side for a moment. Tokenizer files are not counted: this is a lower bound."""
    if gguf_file.is_gguf(hf_dir):
        # Dequantized through an fp32 checkpoint (at least 4 bytes per weight, and a GGUF stores at
        # least about half a byte per weight) before the export; as it is, one copy of the file.
        needed = hf_dir.stat().st_size * (1 if options.weight_format is None else 8)
        _require_free(where, needed)
        return
    stored = sum(path.stat().st_size for path in hf_dir.rglob("*")
                 if path.is_file() and path.suffix in WEIGHT_FILE_SUFFIXES)
    source_bytes_per_weight = 4 if source_precision(hf_dir) == "fp32" else 2
    weights = stored / source_bytes_per_weight
    export_bytes_per_weight = {"fp32": 4, "fp16": 2}.get(options.weight_format, source_bytes_per_weight)
    needed = weights * export_bytes_per_weight
    if options.weight_format == "int8":
        needed += weights
    elif options.weight_format == "int4":
        needed += weights * (0.5 * options.ratio + (1 - options.ratio))
    _require_free(where, needed)


def _require_free(where: Path, needed: float) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < needed:
        raise ModelError(f"not enough disk space in {where} to convert: at least {format_bytes(needed)} needed, "
                         f"{format_bytes(free)} free; free space, or convert onto a larger volume "
                         "(--download-dir, or --output for ovllm convert)")


def _require_converter() -> None:
    try:
        importlib.metadata.version("optimum-intel")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError("converting a Hugging Face model needs the convert extra (torch, optimum-intel, NNCF): "
                         "pip install 'ovllm[convert]', or run ovllm convert elsewhere and serve its IR "
                         "directory") from None


def convert_into(target: Path, local: LocalModel, options: ConversionOptions, metadata: dict) -> None:
    """Convert `local` into `target` unless another process did it first; log the time and size."""
    title = f"converting {local.name} to {_label(local, options)}"
    log.info("%s into %s", title, target)
    started = time.monotonic()
    if not _genai_only(local, options):
        from ovllm_engine.onboard import export  # torch, optimum-intel, NNCF: seconds to import

    def build(tmp: Path) -> None:
        try:
            if _genai_only(local, options):
                from_gguf.write_ir(local.path, tmp)
                tokenizer_check.check(tokenizer_check.gguf_encoder(local.path, tmp), tmp,
                                      f"GenAI's reader of {local.name}")
            elif local.is_gguf:
                export.export_gguf(local.path, tmp, options, title)
            else:
                export.export_ir(local.path, tmp, options, title)
        except ModelError:
            raise
        except Exception as exc:
            raise _explain(exc, local, tmp) from None
        made = {**metadata, "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - started, 1), "size_bytes": directory_size(tmp)}
        (tmp / MARKER).write_text(json.dumps(made, indent=2) + "\n")

    waiting = (f"another process is converting {local.name} into {target}: waiting for it to finish "
               f"(lock {lock_path(target)})")
    if publish_once(target, build, is_converted, waiting):
        log.info("converted %s to %s OpenVINO IR in %s, %s on disk: %s", local.name, _label(local, options),
                 format_duration(time.monotonic() - started), format_bytes(directory_size(target)), target)
    else:
        _reuse(target, metadata["key"])


def _explain(exc: Exception, local: LocalModel, tmp: Path) -> ModelError:
    if _disk_full(exc, tmp):
        return ModelError(f"the disk holding {tmp.parent} filled up while converting {local.name} "
                          f"({format_bytes(shutil.disk_usage(tmp).free)} free): free space, or convert onto a "
                          "larger volume (--download-dir, or --output for ovllm convert)")
    log.debug("conversion failed", exc_info=exc)
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return ModelError(f"converting {local.name} failed: {type(exc).__name__}: {first_line} "
                      "(rerun with --log-level DEBUG for the traceback)")


def _disk_full(exc: BaseException, where: Path) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:  # a writer (OpenVINO's C++ serializer) may report a failed write without the errno
        return shutil.disk_usage(where).free < 1024 * 1024
    except OSError:
        return False


def _convert_in_child(target: Path, local: LocalModel, options: ConversionOptions, metadata: dict) -> None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_child_main, args=(target, local, options, metadata,
                                                      logging.getLogger().getEffectiveLevel()), name="ovllm-convert")

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    child.start()
    try:
        child.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.is_alive():  # we are being stopped: stop the conversion too (the next start cleans up)
            child.terminate()
            child.join()
    if child.exitcode == 0:
        return
    if child.exitcode > 0:
        raise ConversionReported("")
    cause = " (out of memory?)" if child.exitcode == -signal.SIGKILL else ""
    raise ModelError(f"the conversion process was killed by signal {-child.exitcode}{cause}: give it more memory, "
                     "or convert elsewhere with ovllm convert and serve the IR directory")


def _child_main(target, local, options, metadata, log_level) -> None:
    from ovllm_cli.logs import setup_logging

    setup_logging(log_level)
    try:
        convert_into(target, local, options, metadata)
    except ModelError as exc:
        log.error("%s", exc)
        sys.exit(1)


def _copy_ir(local: LocalModel, output: Path) -> LocalModel:
    """`ovllm convert IR_DIR --output DIR`: the IR as it is, published into DIR like a conversion."""
    key = hashlib.sha256(json.dumps({"ir": str(local.path), "files": _fingerprint(local.path)}).encode()).hexdigest()
    if _reuse(output, key):
        return replace(local, path=output)
    _check_free(output)

    def build(tmp: Path) -> None:
        shutil.copytree(local.path, tmp, dirs_exist_ok=True)
        made = {"key": key, "source": str(local.path), "copied": True, "options": {},
                "converted_at": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": 0,
                "size_bytes": directory_size(tmp)}
        (tmp / MARKER).write_text(json.dumps(made, indent=2) + "\n")

    publish_once(output, build, is_converted)
    log.info("copied the OpenVINO IR in %s to %s", local.path, output)
    return replace(local, path=output)
