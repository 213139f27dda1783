"""What MODEL names (an OpenVINO IR directory, a Hugging Face model directory, a GGUF file or a
directory holding one, or a hub id) and the download of a hub id with huggingface_hub, which reads
HF_TOKEN, HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE itself. A GGUF repo on the hub holds one file per
quantization, often gigabytes each: --gguf-file names the one to fetch, and only it is downloaded."""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ovllm_engine import gguf_file
from ovllm_engine.onboard.progress import format_bytes, format_duration, progress_class
from ovllm_engine.onboard.store import directory_size

log = logging.getLogger("ovllm.onboard")

IR_MODEL_FILE = "openvino_model.xml"


class ModelError(Exception):
    """A model that cannot be onboarded. The message is one line: the cause, then a hint."""


@dataclass(frozen=True)
class LocalModel:
    """A model on this machine (a directory, or a GGUF file) and where it came from."""

    path: Path
    is_ir: bool
    name: str  # the name clients ask for by default: the hub id, or the directory's or file's name
    repo_id: str | None = None
    commit: str | None = None  # the hub commit that was downloaded

    @property
    def is_gguf(self) -> bool:
        """A GGUF file, served by OpenVINO GenAI's own GGUF reader as it is."""
        return gguf_file.is_gguf(self.path)


def is_ir_dir(path: Path) -> bool:
    return (path / IR_MODEL_FILE).is_file()


def local_directory(model: str, gguf_name: str | None = None) -> LocalModel | None:
    """The model MODEL names on this machine, or None when it names no existing path (then it may be
    a hub id). gguf_name: the GGUF file to take in the directory MODEL."""
    path = Path(model).expanduser()
    if not path.exists():
        if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
            raise ModelError(
                f"{model}: no such file or directory; give a model directory, a GGUF file or a hub id such as "
                "Qwen/Qwen2.5-0.5B"
            )
        return None
    if not path.is_dir():
        path = path.absolute()  # not resolved: a hub cache's GGUF is a link to a blob without the suffix
        if gguf_file.is_gguf(path):
            if gguf_name and gguf_name != path.name:
                raise ModelError(f"--gguf-file {gguf_name} names another file than {path}: give one of them")
            return LocalModel(path, False, path.stem)
        raise ModelError(f"{model} is a file but not a GGUF file (*.gguf): give a GGUF file or the directory "
                         "that holds the model")
    path = path.resolve()
    if gguf_name:
        return _gguf_in(path, gguf_name)
    if is_ir_dir(path):
        return LocalModel(path, True, path.name)
    if (path / "config.json").is_file():
        return LocalModel(path, False, path.name)
    ggufs = gguf_files(path)
    if len(ggufs) == 1:
        return LocalModel(ggufs[0], False, ggufs[0].stem)
    if ggufs:
        raise ModelError(f"{path} holds {len(ggufs)} GGUF files ({', '.join(p.name for p in ggufs[:6])}): "
                         "choose one with --gguf-file NAME")
    raise ModelError(
        f"{path} holds neither OpenVINO IR ({IR_MODEL_FILE}), a Hugging Face model (config.json) nor a GGUF file: "
        "point MODEL at the model's own directory or file"
    )


def gguf_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if gguf_file.is_gguf(p))


def _gguf_in(directory: Path, name: str) -> LocalModel:
    path = directory / name
    if not gguf_file.is_gguf(path):
        present = ", ".join(p.name for p in gguf_files(directory)[:6]) or "none"
        raise ModelError(f"--gguf-file {name}: no such GGUF file in {directory} (GGUF files there: {present})")
    return LocalModel(path, False, path.stem)


def check_hub_id(model: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise ModelError(f"{model!r} is neither a directory nor a valid hub id ({exc})") from None


def download(repo_id: str, revision: str | None, cache_dir: str | None, gguf_name: str | None = None) -> LocalModel:
    """Download (or find in the cache) a hub snapshot; raise ModelError with the cause and a hint.
    gguf_name: only that GGUF file; without it, GGUF files are left out (a repo may hold dozens)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = cache_dir or constants.HF_HUB_CACHE
    where = "the local Hugging Face cache" if constants.HF_HUB_OFFLINE else constants.ENDPOINT
    log.info("fetching %s (revision %s) from %s into %s", repo_id, revision or "main", where, cache)
    started = time.monotonic()
    try:
        patterns = {"allow_patterns": [gguf_name]} if gguf_name else {"ignore_patterns": ["*.gguf"]}
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, tqdm_class=progress_class(),
                                      **patterns))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ModelError(
                f"{repo_id} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1 forbids downloading it: "
                "unset HF_HUB_OFFLINE, or fill the cache where the hub is reachable"
            ) from None
        raise ModelError(
            f"cannot reach {constants.ENDPOINT} to download {repo_id}, and it is not in the cache {cache}: "
            "check the network, HF_ENDPOINT or the proxy, or use HF_HUB_OFFLINE=1 with a filled cache"
        ) from None
    except GatedRepoError:
        raise ModelError(
            f"{repo_id} is gated on {constants.ENDPOINT}: accept its terms on the hub and set HF_TOKEN "
            "to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{repo_id}: no such model on {constants.ENDPOINT}, or it is private and HF_TOKEN is unset or wrong: "
            "check the id, or set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"{repo_id} has no revision {revision!r}: give a branch, tag or commit that exists") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = "set HF_TOKEN to a token allowed to read it" if status in (401, 403) else "try again later"
        raise ModelError(f"the hub refused {repo_id} (HTTP {status}): {hint}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelError(
                f"the disk holding {cache} filled up while downloading {repo_id}: free space, or give "
                "--download-dir on a larger volume"
            ) from None
        raise
    commit = path.name  # snapshots/<commit>
    log.info("%s@%s ready in %s: %s in %s", repo_id, commit[:12], format_duration(time.monotonic() - started),
             format_bytes(directory_size(path)), path)
    if not gguf_name and not is_ir_dir(path) and not (path / "config.json").is_file():
        raise ModelError(f"{repo_id} holds no OpenVINO IR ({IR_MODEL_FILE}) and no transformers model (config.json): "
                         "for a repo of GGUF files, name the one to serve with --gguf-file NAME")
    local = local_directory(str(path), gguf_name)
    return LocalModel(local.path, local.is_ir, repo_id, repo_id, commit)
