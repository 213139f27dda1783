"""One log line per generation request, at INFO, when it ends: what `kubectl logs` shows of traffic.

    request chatcmpl-3f2a...: POST /v1/chat/completions 200 prompt_tokens=24 output_tokens=17
    finish_reason=stop ttft=0.091s latency=0.402s

(one line). With `--log-format json` the same fields are keys of the JSON object (cli/ovllm_cli/logs.py).
The prompt's text is never logged unless `--log-prompts` (vLLM's `--enable-log-requests` shows it;
prompts hold what users typed); `--max-log-len` bounds it. `--disable-log-requests` turns the lines
off. Requests refused before generation (4xx) are logged by the server's error path, rate-limited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ovllm_engine.server.metrics import SequenceTiming

log = logging.getLogger("ovllm.requests")


@dataclass(frozen=True)
class RequestLogOptions:
    enabled: bool = True  # --disable-log-requests turns it off
    prompts: bool = False  # --log-prompts
    max_len: int | None = None  # --max-log-len: characters of prompt text at most


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class RequestLog:
    def __init__(self, options: RequestLogOptions, decode: Callable[[list[int]], str]):
        self.options = options
        self.decode = decode

    def ended(self, request_id: str, method: str, path: str, status: int, arrival: float,
              prompts: list[list[int]], timings: list[SequenceTiming]) -> None:
        if not self.options.enabled or not log.isEnabledFor(logging.INFO):
            return
        firsts = [t.first_token for t in timings if t.first_token is not None]
        reasons = list(dict.fromkeys(t.finish_reason or "abort" for t in timings))
        fields = {
            "request_id": request_id,
            "method": method,
            "endpoint": path,
            "status": status,
            "prompt_tokens": sum(len(p) for p in prompts),
            "output_tokens": sum(t.generated for t in timings),
            "finish_reason": ",".join(reasons) or None,
            "ttft_s": _seconds(min(firsts) - arrival if firsts else None),
            "latency_s": _seconds(time.monotonic() - arrival),
        }
        if self.options.prompts:
            fields["prompt"] = [self._shown(p) for p in prompts] if len(prompts) > 1 else self._shown(prompts[0])
        shown = " ".join(f"{k.removesuffix('_s')}={self._plain(k, v)}" for k, v in fields.items()
                         if k not in ("request_id", "method", "endpoint", "status"))
        log.info("request %s: %s %s %d %s", request_id, method, path, status, shown, extra={"fields": fields})

    def _shown(self, prompt_ids: list[int]) -> str:
        text = self.decode(prompt_ids)
        return text if self.options.max_len is None else text[:self.options.max_len]

    @staticmethod
    def _plain(key: str, value) -> str:
        if value is None:
            return "-"
        if key.endswith("_s"):
            return f"{value:.3f}s"
        if key == "prompt":
            return repr(value)
        return str(value)
