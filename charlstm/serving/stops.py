"""Stop sequences found as text arrives, a piece at a time, in time linear in the text.

A completion's text grows by the piece each token decodes to. :class:`StopMatcher` hands back
what is certain at once and holds back only a tail that could still begin a stop sequence (at
most the longest stop less one character), so the search for a stop reads the held tail and the
new piece, never the text already let go: a stop that began in text already let go would have
had its beginning held back. The earliest stop in the text wins; at the same place, the longest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Fed:
    """What one piece of text gave: the text now certain, and whether a stop ended the completion."""

    text: str
    stopped: bool


class StopMatcher:
    """The stop sequences of one completion (none: every piece is certain at once)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    @property
    def held(self) -> str:
        """The tail held back: it could begin a stop."""
        return self._held

    def feed(self, piece: str) -> Fed:
        """Take the next piece of text; a stop found makes the text before it the last certain text."""
        if not self.stops:
            return Fed(piece, False)
        window = self._held + piece
        found = [(at, -len(stop)) for stop in self.stops if (at := window.find(stop)) >= 0]
        if found:
            self._held = ""
            return Fed(window[: min(found)[0]], True)
        keep = _could_begin_a_stop(window, self.stops)
        self._held = window[len(window) - keep :] if keep else ""
        return Fed(window[: len(window) - keep], False)

    def finish(self) -> str:
        """The completion ended otherwise (its length): the tail held back is text after all."""
        held, self._held = self._held, ""
        return held


def _could_begin_a_stop(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest tail of ``text`` that is the beginning of some stop (not a whole
    one): each stop is tried only where its first character is, from the earliest place it fits."""
    best = 0
    for stop in stops:
        at = text.find(stop[0], max(len(text) - len(stop) + 1, 0))
        while at >= 0 and len(text) - at > best:
            if stop.startswith(text[at:]):
                best = len(text) - at
                break
            at = text.find(stop[0], at + 1)
    return best
