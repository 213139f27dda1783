"""Choosing a backend for a request: prefix hashing with bounded loads, least load, round robin.

Pure logic, no I/O: the proxy tells the balancer which backends exist, which requests are in flight
and when a backend failed, and asks it where the next request goes. Time is passed in, so every
decision here can be tested without clocks or sockets.

Prefix hashing is consistent hashing with bounded loads (CHWBL; Mirrokni, Thorup and Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2016, as KubeAI's PrefixHash uses it): each backend owns
many points on a hash ring; a request's key (the beginning of its prompt) hashes to a point and goes
to the first backend clockwise whose requests in flight are under

    bound = ceil(load_factor * (total in flight + 1) / backends)

so equal prompt beginnings meet the same prefix cache while no replica takes much more than its share.
Adding or removing a backend moves only the keys its points own, about 1/N of them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass

STRATEGIES = ("prefix-hash", "least-load", "round-robin")
# Points per backend on the ring: with ~128 the share of keys each backend owns stays within a few
# percent of 1/N (KubeAI uses 100..160).
VIRTUAL_NODES = 128


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def prefix_key(body: bytes, chars: int) -> str | None:
    """The first `chars` characters of the prompt a request body carries, or None when it has none.

    Chat requests: role and content of each message in order, so requests sharing a system prompt
    (and earlier turns) share a key. Completions: the prompt string; a token-id list or a list of
    prompts is written as compact JSON, the same bytes for the same prompt.
    """
    try:
        request = json.loads(body)
        if not isinstance(request, dict):
            return None
        messages, prompt = request.get("messages"), request.get("prompt")
        if isinstance(messages, list) and messages:
            text = "".join(_message_text(message) for message in messages)
        elif isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, list) and prompt:
            text = json.dumps(prompt, separators=(",", ":"), ensure_ascii=False)
        else:
            return None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, an integer past the digit limit
        return None  # the engine answers it with a 400; any replica will do
    return text[:chars] if text else None


def _message_text(message) -> str:
    if not isinstance(message, dict):
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text, other parts as JSON
        content = "".join(part["text"] if isinstance(part, dict) and isinstance(part.get("text"), str)
                          else json.dumps(part, separators=(",", ":"), ensure_ascii=False) for part in content)
    elif not isinstance(content, str):
        content = "" if content is None else json.dumps(content, separators=(",", ":"), ensure_ascii=False)
    return f"{message.get('role', '')}\n{content}\n"


class Ring:
    """The hash ring: VIRTUAL_NODES points per backend, sorted."""

    def __init__(self, backends: list[str], virtual_nodes: int = VIRTUAL_NODES):
        points = sorted((stable_hash(f"{backend}#{index}"), backend)
                        for backend in backends for index in range(virtual_nodes))
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]

    def walk(self, key: str):
        """The backends in the order a key meets them clockwise, each once."""
        if not self._owners:
            return
        start = bisect.bisect(self._hashes, stable_hash(key))
        seen: set[str] = set()
        for offset in range(len(self._owners)):
            owner = self._owners[(start + offset) % len(self._owners)]
            if owner not in seen:
                seen.add(owner)
                yield owner


@dataclass(frozen=True)
class Choice:
    backend: str
    # prefix-hash only: "home" (the key's first backend), "spilled" (the bound moved it on) or
    # "fallback" (no prompt to hash: least load); None for the other strategies.
    outcome: str | None = None


class Balancer:
    def __init__(self, strategy: str = "prefix-hash", load_factor: float = 1.25,
                 virtual_nodes: int = VIRTUAL_NODES):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if load_factor < 1:
            raise ValueError(f"load factor {load_factor} is below 1: the backends could not take every request")
        self.strategy, self.load_factor, self.virtual_nodes = strategy, load_factor, virtual_nodes
        self.backends: list[str] = []
        self.in_flight: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        self._ring = Ring([], virtual_nodes)
        self._turn = 0

    def set_backends(self, backends) -> tuple[set[str], set[str]]:
        """Replace the set of backends; returns (added, removed). In-flight counts of those that stay are kept."""
        new = sorted(set(backends))
        added, removed = set(new) - set(self.backends), set(self.backends) - set(new)
        self.backends = new
        self.in_flight = {backend: self.in_flight.get(backend, 0) for backend in new}
        self._ejected_until = {b: t for b, t in self._ejected_until.items() if b in self.in_flight}
        self._ring = Ring(new, self.virtual_nodes)
        return added, removed

    def acquire(self, backend: str) -> None:
        if backend in self.in_flight:
            self.in_flight[backend] += 1

    def release(self, backend: str) -> None:
        # a backend removed while its requests ran is no longer counted
        if self.in_flight.get(backend, 0) > 0:
            self.in_flight[backend] -= 1

    def eject(self, backend: str, until: float) -> None:
        """Passive health: skip this backend until `until` (unless nothing else is left)."""
        if backend in self.in_flight:
            self._ejected_until[backend] = until

    def available(self, now: float) -> list[str]:
        """Backends not ejected at `now`."""
        return [b for b in self.backends if self._ejected_until.get(b, 0.0) <= now]

    def bound(self, candidates: list[str]) -> int:
        total = sum(self.in_flight[b] for b in candidates)
        return math.ceil(self.load_factor * (total + 1) / len(candidates))

    def home(self, key: str, exclude=(), now: float = 0.0) -> str | None:
        """The backend a key goes to when no backend is loaded."""
        candidates = set(self._candidates(exclude, now))
        return next((b for b in self._ring.walk(key) if b in candidates), None)

    def choose(self, key: str | None = None, exclude=(), now: float = 0.0) -> Choice | None:
        """Where the next request goes, never to a backend in `exclude`; None when none is left."""
        candidates = self._candidates(exclude, now)
        if not candidates:
            return None
        if self.strategy == "round-robin":
            self._turn += 1
            return Choice(candidates[self._turn % len(candidates)])
        if self.strategy == "least-load" or key is None:
            return Choice(self._least_loaded(candidates), "fallback" if self.strategy == "prefix-hash" else None)
        bound, allowed = self.bound(candidates), set(candidates)
        walk = [b for b in self._ring.walk(key) if b in allowed]
        for backend in walk:
            if self.in_flight[backend] < bound:
                return Choice(backend, "home" if backend == walk[0] else "spilled")
        # unreachable with load_factor >= 1 (some backend is at or below the average), kept as a guard
        return Choice(self._least_loaded(candidates), "spilled")

    def _candidates(self, exclude, now: float) -> list[str]:
        left = [b for b in self.backends if b not in exclude]
        healthy = [b for b in left if self._ejected_until.get(b, 0.0) <= now]
        # ejected backends are tried when nothing else is left: a replica that failed once may be back
        return healthy or left

    def _least_loaded(self, candidates: list[str]) -> str:
        # ties go round: rotate the candidates a step each time before taking the minimum
        self._turn += 1
        shift = self._turn % len(candidates)
        rotated = candidates[shift:] + candidates[:shift]
        return min(rotated, key=lambda b: self.in_flight[b])
