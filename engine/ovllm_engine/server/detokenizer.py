"""Token ids to text, incrementally, without splitting a character, and stop strings on the text.

Byte-level BPE models (Qwen's among them) emit tokens that hold part of a UTF-8 character; a random
model does so all the time. Text is released only up to a point where the decoded text ends in a
whole character, the way vLLM's detokenizer does it, so the concatenated stream equals the text
decoded in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest stop string in text at or after start, or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


class IncrementalText:
    """Text of one sequence as its tokens arrive; `add` returns the text that is safe to send now."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self._decode = decode
        self._stops = list(stops)
        # Text that could still turn out to begin a stop string is held back from the stream.
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.token_ids: list[int] = []
        self._prefix_offset = 0  # ids before this are decoded into self.text for good
        self.text = ""
        self._sent = 0
        self.stopped = False  # a stop string was found; the text ends just before it

    def add(self, new_ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        self.token_ids.extend(new_ids)
        pending = self._decode(self.token_ids[self._prefix_offset :])
        if pending and not pending.endswith(REPLACEMENT):
            self._append(pending)
            self._prefix_offset = len(self.token_ids)
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The rest of the text once the sequence ended, incomplete characters included."""
        if not self.stopped and self._prefix_offset < len(self.token_ids):
            self._append(self._decode(self.token_ids[self._prefix_offset :]))
            self._prefix_offset = len(self.token_ids)
        return self._release(final=True)

    def _append(self, piece: str) -> None:
        search_from = max(0, len(self.text) - self._hold)
        self.text += piece
        index = find_stop(self.text, self._stops, search_from)
        if index is not None:
            self.text = self.text[:index]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else max(self._sent, len(self.text) - self._hold)
        delta = self.text[self._sent : end]
        self._sent = end
        return delta
