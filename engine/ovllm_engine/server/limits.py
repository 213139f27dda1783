"""The flags that bound what one client may take of `ovllm serve` (standard library only: the
command line reads them without importing the server)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one client may take of the server (flags of `ovllm serve`)."""

    max_request_bytes: int = 4 * 1024 * 1024
    header_timeout: float = 30.0  # for a complete request head, after connecting or after the last response
    body_timeout: float = 60.0  # for the whole body
    max_seqs_per_request: int = 256  # prompts x n
    max_queued_seqs: int = 256  # sequences beyond the running batch before new requests get 429
    retry_after: int = 1  # seconds, in 429 answers
