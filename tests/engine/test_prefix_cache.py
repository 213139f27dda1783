"""The prefix-cache ledger behind vllm:prefix_cache_queries_total and vllm:prefix_cache_hits_total
follows GenAI's block manager: chained full-block hashes, reuse only of computed blocks, finished
requests' blocks kept, fresh blocks taken before kept ones are overwritten (oldest first)."""

from __future__ import annotations

from ovllm_engine.server.prefix_cache import PrefixCacheLedger, block_hashes

BLOCK = 4


def test_hashes_chain_whole_prefixes():
    a = block_hashes(list(range(9)), BLOCK)
    assert len(a) == 2  # the ninth token is a partial block: no hash
    assert block_hashes([0, 1, 2, 3, 9, 9, 9, 9], BLOCK)[0] == a[0]
    # the same second block after a different first block is a different block
    assert block_hashes([9, 1, 2, 3, 4, 5, 6, 7], BLOCK)[1] != a[1]


def test_a_finished_requests_blocks_are_reused_by_the_next():
    ledger = PrefixCacheLedger(BLOCK, None)
    ledger.add(1, list(range(10)))
    assert (ledger.queries, ledger.hits) == (10, 0)
    ledger.grow(1, 11)
    ledger.finish(1, list(range(11)))
    assert ledger.in_use == 0
    ledger.add(2, list(range(10)) + [42, 43])
    assert (ledger.queries, ledger.hits) == (22, 8)  # two full blocks of 4
    # a prompt that is wholly cached still computes its last token
    ledger.add(3, list(range(8)))
    assert ledger.hits == 8 + 7


def test_blocks_are_shared_only_once_computed():
    ledger = PrefixCacheLedger(BLOCK, None)
    ledger.add(1, list(range(10)))
    ledger.add(2, list(range(10)))  # in the same step: nothing of 1 is computed yet
    assert ledger.hits == 0
    ledger.grow(1, 11)  # 1's first token: its prompt's blocks are computed
    ledger.add(3, list(range(10)))
    assert ledger.hits == 8
    for request, tokens in ((1, 11), (2, 10), (3, 10)):
        ledger.finish(request, list(range(tokens)))
    assert ledger.in_use == 0


def test_kept_blocks_are_overwritten_oldest_first_when_no_fresh_one_is_left():
    ledger = PrefixCacheLedger(BLOCK, total_blocks=4)
    ledger.add(1, [1] * 8)
    ledger.finish(1, [1] * 8)  # two kept blocks
    ledger.add(2, [2] * 8)
    ledger.finish(2, [2] * 8)  # two more: the cache is full of kept blocks
    ledger.add(3, [3] * 4)  # needs one block: overwrites 1's first, the oldest
    ledger.finish(3, [3] * 4)
    ledger.add(4, [1] * 8)
    assert ledger.hits == 0  # 1's chain is broken at its first block
    ledger.finish(4, [1] * 8)
    ledger.add(5, [3] * 4 + [0])
    assert ledger.hits == 4  # 3's block survived: it was used last


def test_without_a_size_nothing_is_overwritten():
    ledger = PrefixCacheLedger(BLOCK, None)
    for request in range(100):
        ledger.add(request, [request] * 8)
        ledger.finish(request, [request] * 8)
    ledger.add(1000, [0] * 9)
    assert ledger.hits == 8
