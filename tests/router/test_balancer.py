"""The balancer's choices, without sockets: prefix keys, consistent hashing with bounded loads, least
load, round robin and passive ejection."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from ovllm_router.balancer import Balancer, Choice, prefix_key

BACKENDS = [f"http://10.0.0.{i}:8000" for i in range(1, 4)]
KEYS = [f"key {i}: a prompt of its own" for i in range(3000)]


def balancer(strategy: str = "prefix-hash", backends=BACKENDS, **kwargs) -> Balancer:
    b = Balancer(strategy, **kwargs)
    b.set_backends(backends)
    return b


def homes(b: Balancer, keys=KEYS) -> dict[str, str]:
    return {key: b.choose(key).backend for key in keys}


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_prefix_key_of_completions_chat_token_ids_and_invalid_bodies():
    assert prefix_key(body(prompt="You are a helpful assistant. Question 1"), 20) == "You are a helpful as"
    assert prefix_key(body(prompt="short"), 100) == "short"
    # token ids and lists of prompts: compact JSON, the same text for the same prompt
    assert prefix_key(body(prompt=[1, 2, 3]), 100) == "[1,2,3]"
    assert prefix_key(body(prompt=[[1, 2], [3]]), 100) == "[[1,2],[3]]"
    assert prefix_key(body(prompt=["a", "b"]), 4) == '["a"'
    # chat: role and content in order, so one system prompt gives one key whatever the question
    system = {"role": "system", "content": "You are a pirate. Answer in rhymes."}
    one = prefix_key(body(messages=[system, {"role": "user", "content": "Where is the gold?"}]), 44)
    two = prefix_key(body(messages=[system, {"role": "user", "content": "Who are you?"}]), 44)
    assert one == two == "system\nYou are a pirate. Answer in rhymes.\nu"
    assert prefix_key(body(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]), 100) == \
        "user\nhi\n"
    assert prefix_key(body(messages=[{"role": "user", "content": "hi"}]), 100) != \
        prefix_key(body(messages=[{"role": "assistant", "content": "hi"}]), 100)
    for invalid in (b"", b"not json", b"\xff\xfe", b"[1, 2]", body(prompt=""), body(prompt=[]), body(messages=[]),
                    body(model="m"), body(prompt=None)):
        assert prefix_key(invalid, 100) is None, invalid


def test_equal_keys_go_to_one_backend_and_distinct_keys_spread():
    b = balancer()
    assert {b.choose("the same prompt").backend for _ in range(50)} == {b.choose("the same prompt").backend}
    shares = Counter(homes(b).values())
    assert set(shares) == set(BACKENDS)
    for backend in BACKENDS:  # each owns about a third of the keys
        assert 0.2 < shares[backend] / len(KEYS) < 0.47, shares
    # the same in another process or run: the hash is not Python's salted hash()
    assert homes(balancer(), KEYS[:50]) == homes(b, KEYS[:50])


def test_adding_or_removing_a_backend_moves_about_one_in_n_keys():
    before = homes(balancer())
    four = BACKENDS + ["http://10.0.0.4:8000"]
    after = homes(balancer(backends=four))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == four[3] for key in moved)  # only to the new backend
    assert 0.15 < len(moved) / len(KEYS) < 0.35, len(moved)
    removed = homes(balancer(backends=BACKENDS[1:]))
    moved = [key for key in KEYS if before[key] != removed[key]]
    assert all(before[key] == BACKENDS[0] for key in moved)  # only the removed backend's keys
    assert 0.2 < len(moved) / len(KEYS) < 0.47, len(moved)


def test_bounded_load_spills_to_the_next_backend_on_the_ring():
    b = balancer(load_factor=1.25)
    key = "a system prompt shared by many requests"
    home = b.choose(key)
    assert home.outcome == "home"
    chosen = []
    for _ in range(30):  # 30 requests of one prefix, none finishing
        choice = b.choose(key)
        chosen.append(choice)
        b.acquire(choice.backend)
        total = sum(b.in_flight.values())
        assert max(b.in_flight.values()) <= math.ceil(1.25 * total / 3), b.in_flight
    assert chosen[0].backend == home.backend
    assert {c.outcome for c in chosen} == {"home", "spilled"}
    assert b.in_flight[home.backend] == max(b.in_flight.values())
    assert set(b.in_flight) == set(BACKENDS) and min(b.in_flight.values()) > 0
    # the load gone, the key is home again
    for backend in BACKENDS:
        while b.in_flight[backend]:
            b.release(backend)
    assert b.choose(key) == home


def test_bound_uses_the_formula():
    b = balancer(load_factor=1.25)
    b.in_flight.update({BACKENDS[0]: 4, BACKENDS[1]: 0, BACKENDS[2]: 0})
    assert b.bound(BACKENDS) == math.ceil(1.25 * 5 / 3) == 3
    key = next(k for k in KEYS if b.home(k) == BACKENDS[0])
    assert b.choose(key).outcome == "spilled"
    # 2 + 1 + 1 in flight: bound ceil(1.25 * 5 / 3) = 3, and the home backend with 2 takes it
    b.in_flight.update({BACKENDS[0]: 2, BACKENDS[1]: 1, BACKENDS[2]: 1})
    assert b.choose(key) == Choice(BACKENDS[0], "home")


def test_least_load_takes_the_least_loaded_and_rotates_ties():
    b = balancer("least-load")
    b.in_flight.update({BACKENDS[0]: 3, BACKENDS[1]: 1, BACKENDS[2]: 2})
    assert {b.choose("any").backend for _ in range(10)} == {BACKENDS[1]}
    b.in_flight.update({BACKENDS[0]: 1, BACKENDS[1]: 1, BACKENDS[2]: 1})
    assert {b.choose().backend for _ in range(6)} == set(BACKENDS)


def test_prefix_hash_without_a_key_falls_back_to_least_load():
    b = balancer()
    b.in_flight.update({BACKENDS[0]: 2, BACKENDS[1]: 2, BACKENDS[2]: 0})
    choice = b.choose(None)
    assert choice.backend == BACKENDS[2] and choice.outcome == "fallback"


def test_round_robin_rotates():
    b = balancer("round-robin")
    picks = [b.choose("same key").backend for _ in range(9)]
    assert Counter(picks) == {backend: 3 for backend in BACKENDS}
    assert picks[:3] == picks[3:6] == picks[6:]


@pytest.mark.parametrize("strategy", ["prefix-hash", "least-load", "round-robin"])
def test_excluded_and_ejected_backends_are_skipped_unless_nothing_else_is_left(strategy):
    b = balancer(strategy)
    assert {b.choose(k, exclude=[BACKENDS[0]]).backend for k in KEYS[:60]} == set(BACKENDS[1:])
    b.eject(BACKENDS[1], until=10.0)
    assert {b.choose(k, now=5.0).backend for k in KEYS[:60]} == {BACKENDS[0], BACKENDS[2]}
    assert b.available(5.0) == [BACKENDS[0], BACKENDS[2]]
    # ejection ends with time
    assert {b.choose(k, now=10.0).backend for k in KEYS[:60]} == set(BACKENDS)
    # an ejected backend is still tried when every other one was
    assert b.choose("k", exclude=[BACKENDS[0], BACKENDS[2]], now=5.0).backend == BACKENDS[1]
    assert b.choose("k", exclude=BACKENDS) is None
    assert balancer(strategy, backends=[]).choose("k") is None


def test_set_backends_keeps_counts_of_those_that_stay():
    b = balancer()
    b.acquire(BACKENDS[0])
    b.acquire(BACKENDS[1])
    added, removed = b.set_backends(BACKENDS[1:] + ["http://10.0.0.9:8000"])
    assert added == {"http://10.0.0.9:8000"} and removed == {BACKENDS[0]}
    assert b.in_flight == {BACKENDS[1]: 1, BACKENDS[2]: 0, "http://10.0.0.9:8000": 0}
    b.release(BACKENDS[0])  # a request to a removed backend ends: nothing to count
    assert BACKENDS[0] not in b.in_flight


def test_invalid_settings():
    with pytest.raises(ValueError, match="strategy"):
        Balancer("random")
    with pytest.raises(ValueError, match="load factor"):
        Balancer("prefix-hash", load_factor=0.9)
