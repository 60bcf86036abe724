"""Counting a stream's text deltas from their bytes, exactly as a JSON parse counts them.

A stream's text deltas repeat a few shapes: the same bytes around one string value that
changes (`{"id":"c1",...,"delta":{"content":"` + value + `"},...}`). A shape is learnt
from a delta its tracker has parsed, and only once parses prove it: the shape's bytes
with the values "", "a" and "ab" in place must count 0, 1 and 2 characters on one counter
and nothing else. The tracker's counts depend on a string value only through its length
and whether it is empty, so the shape then counts len(value) for every value.

A later delta of a known shape is counted without a parse when its value has no quote,
backslash or control character (a JSON string whose characters are then exactly its UTF-8
decoding: the document parses to the same structure, the value to `value.decode()`).
Anything else (an escape, bytes that are not UTF-8, an unknown shape) is parsed.
"""

import re
from collections.abc import Callable

# (visible, reasoning) characters the tracker's parse counts in one event's data; None:
# the event does more than add text (the caller declines it)
Effect = Callable[[bytes], tuple[int, int] | None]

MAX_SHAPES = 4  # a stream's text deltas: reasoning and visible, maybe two of each layout
MAX_LEARNS = 8  # shapes a stream may try (3 parses each); most streams need 2
_NOT_PLAIN = re.compile(rb'["\\\x00-\x1f]')  # what a plain JSON string value never holds
_PROBES = (b"", b"a", b"ab")
_AS_VISIBLE = [(len(value), 0) for value in _PROBES]
_AS_REASONING = [(0, len(value)) for value in _PROBES]


class TextScan:
    """One stream's shapes and its tracker's `effect`, the parse it stands in for."""

    __slots__ = ("effect", "keys", "shapes", "learns")

    def __init__(self, effect: Effect, keys: tuple[bytes, ...]) -> None:
        self.effect = effect
        self.keys = keys  # where a counted value may start: b'"content":"' and the like
        # (bytes before the value, bytes after it, counted as reasoning)
        self.shapes: list[tuple[bytes, bytes, bool]] = []
        self.learns = MAX_LEARNS

    def count(self, data: bytes) -> tuple[int, int] | None:
        """The (visible, reasoning) characters `effect(data)` gives, by its shape when
        known, else by `effect` (and its shape learnt)."""
        size = len(data)
        for prefix, suffix, reasoning in self.shapes:
            start = len(prefix)
            end = size - len(suffix)
            if end >= start and data.startswith(prefix) and data.endswith(suffix):
                value = data[start:end]
                if _NOT_PLAIN.search(value) is None:
                    if value.isascii():
                        chars = end - start
                    else:
                        try:
                            chars = len(value.decode())
                        except UnicodeDecodeError:
                            break
                    return (0, chars) if reasoning else (chars, 0)
        counts = self.effect(data)
        if counts is not None and self.learns > 0 and len(self.shapes) < MAX_SHAPES:
            self._learn(data)
        return counts

    def _learn(self, data: bytes) -> None:
        effect = self.effect
        for key in self.keys:
            at = data.find(key)
            if at < 0:
                continue
            start = at + len(key)
            end = data.find(b'"', start)
            if end < 0:
                continue
            prefix, suffix = data[:start], data[end:]
            if any(s == prefix and t == suffix for s, t, _ in self.shapes):
                return  # known, this value was not plain
            if self.learns <= 0:
                return
            self.learns -= 1
            counts = [effect(prefix + value + suffix) for value in _PROBES]
            if counts == _AS_VISIBLE or counts == _AS_REASONING:
                self.shapes.append((prefix, suffix, counts == _AS_REASONING))
                return
