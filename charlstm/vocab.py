"""The vocabulary: the characters a model knows, and text to ids and back."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from charlstm.errors import UserError


class CharVocab:
    """The sorted set of characters of a corpus; ids are positions in that order."""

    def __init__(self, chars: Iterable[str]):
        self.chars: tuple[str, ...] = tuple(sorted(set(chars)))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary needs at least one single-character entry")
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({self.to_string()!r})"

    def to_string(self) -> str:
        """The vocabulary as one string, the form saved in checkpoints."""
        return "".join(self.chars)

    def unknown(self, text: Iterable[str]) -> list[str]:
        """Characters of ``text`` that the vocabulary does not hold, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def check_known(self, text: Iterable[str], subject: str, remedy: str) -> None:
        """Raise ``UserError`` naming the characters of ``text`` the vocabulary lacks (the first ten)."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(f"{subject} has characters the model never saw: {shown}{more}; {remedy}")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; raises ``UserError`` naming any unknown characters."""
        self.check_known(text, "the text", f"expected text made of the model's {len(self)} characters")
        return [self.index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def codepoint_table(self) -> np.ndarray:
        """Array mapping a Unicode code point to its id (-1 where absent), for bulk encoding."""
        table = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        return table

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id."""
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)
