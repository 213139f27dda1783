"""Prefix-cache queries and hits, for vllm:prefix_cache_queries_total and vllm:prefix_cache_hits_total.

OpenVINO GenAI's ContinuousBatchingPipeline reuses KV blocks across requests (enable_prefix_caching)
but reports neither lookups nor hits. This ledger follows the same blocks by the same rules, from
the token ids the engine process hands the pipeline and gets back:

- a block is `block_size` tokens; a full block is known by a hash of its tokens and of every token
  before it (so only a shared *prefix* matches), as GenAI's block manager hashes them;
- a new request reuses the longest run of its prompt's full blocks, from the first, that a running
  request has computed (its prompt is done once it has output) or a finished one left; at least
  its last prompt token is computed anew;
- a finished request's full blocks are kept for reuse; fresh blocks are taken first, and a kept
  block is overwritten, least recently used first, only when no fresh one is left (GenAI's
  OverwritableBlocksHashStore).

Queries count prompt tokens, hits the prompt tokens found cached: vLLM's definitions. Where GenAI's
timing differs (it restores blocks when it schedules a request, not when it is added; it allocates
decode blocks step by step), the counts can differ from the pipeline's own under KV pressure only:
while the cache has room nothing is overwritten and both agree.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """The chained hash of each full block of `token_ids`."""
    hashes, previous = [], 0
    for end in range(block_size, len(token_ids) + 1, block_size):
        previous = hash((previous, tuple(token_ids[end - block_size:end])))
        hashes.append(previous)
    return hashes


@dataclass
class _Held:
    shared: list[int]  # hashes of the full blocks it holds that others may reuse
    blocks: int  # all the blocks it holds, the partial last one included
    prompt: list[int]  # hashes of its prompt's full blocks it computes itself (shared once computed)
    prompt_tokens: int


@dataclass
class PrefixCacheLedger:
    block_size: int
    total_blocks: int | None  # None: unknown, nothing is ever overwritten
    queries: int = 0
    hits: int = 0
    _refs: dict[int, int] = field(default_factory=dict)  # full blocks held by running requests
    _kept: OrderedDict[int, None] = field(default_factory=OrderedDict)  # free, reusable; oldest first
    _held: dict[int, _Held] = field(default_factory=dict)
    _in_use: int = 0  # blocks held by running requests

    @property
    def in_use(self) -> int:
        """Blocks held by the requests in the pipeline."""
        return self._in_use

    def add(self, request_id: int, prompt_ids: list[int]) -> None:
        """A request entered the pipeline: count its lookup and take its blocks."""
        hashes = block_hashes(prompt_ids, self.block_size)
        reused = 0
        for block in hashes:
            if block not in self._refs and block not in self._kept:
                break
            reused += 1
        self.queries += len(prompt_ids)
        self.hits += min(reused * self.block_size, len(prompt_ids) - 1)
        for block in hashes[:reused]:
            if block in self._kept:  # it was free: it is in use again
                del self._kept[block]
                self._in_use += 1
            self._refs[block] = self._refs.get(block, 0) + 1
        held = _Held(shared=hashes[:reused], blocks=reused, prompt=hashes[reused:], prompt_tokens=len(prompt_ids))
        self._held[request_id] = held
        self._grow(held, len(prompt_ids))

    def grow(self, request_id: int, tokens: int) -> None:
        """A running request now has `tokens` tokens (prompt and output so far)."""
        held = self._held.get(request_id)
        if held is None:
            return
        self._grow(held, tokens)
        if held.prompt and tokens > held.prompt_tokens:  # its prompt is computed: others may reuse it
            for block in held.prompt:
                if block in self._refs or block in self._kept:
                    break  # a twin computed at the same time: this copy stays private
                self._refs[block] = 1
                held.shared.append(block)
            held.prompt = []

    def finish(self, request_id: int, token_ids: list[int]) -> None:
        """A request left the pipeline with `token_ids` (prompt and output) computed: keep its blocks."""
        held = self._held.pop(request_id, None)
        if held is None:
            return
        self._grow(held, len(token_ids))
        hashes = block_hashes(token_ids, self.block_size)
        for block in held.shared:
            self._release(block)
        computed = [block for block in hashes[len(held.shared):] if block not in self._refs]
        for block in computed:  # newly computed full blocks: free now, kept for reuse
            if block in self._kept:
                self._kept.move_to_end(block)
            else:
                self._kept[block] = None
        self._in_use -= held.blocks - len(held.shared)

    def _grow(self, held: _Held, tokens: int) -> None:
        """Take blocks up to `tokens` tokens: fresh ones first, then overwrite the oldest kept."""
        needed = -(-tokens // self.block_size) - held.blocks
        for _ in range(max(0, needed)):
            if self.total_blocks is not None and self._in_use + len(self._kept) >= self.total_blocks and self._kept:
                self._kept.popitem(last=False)
            self._in_use += 1
            held.blocks += 1

    def _release(self, block: int) -> None:
        count = self._refs[block] - 1
        if count:
            self._refs[block] = count
            return
        del self._refs[block]
        self._kept[block] = None
        self._in_use -= 1
