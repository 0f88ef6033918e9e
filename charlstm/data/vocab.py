"""The vocabulary: the characters a model knows, and text to ids and back.

Characters frequent enough get their own token: ids 0..C-1, in code point order. With byte
fallback, byte tokens follow, and any other character is written as its UTF-8 bytes, so every
text can be encoded and nothing is lost or replaced. The byte tokens are the 128 bytes of
multi-byte sequences (0x80-0xFF) and the ASCII bytes whose character has no own token: an
ASCII character with its own token is never written as a byte, so a row for it would be dead
weight in the model's output. A vocabulary without byte fallback (every character of the
corpus fits, or a checkpoint from before byte fallback) knows only its own characters.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

import numpy as np

from charlstm.errors import UserError

HIGH_BYTES = tuple(range(0x80, 0x100))  # every byte of a multi-byte UTF-8 sequence


class CharVocab:
    """The characters with their own token, in code point order, and whether byte tokens follow."""

    def __init__(self, chars: Iterable[str], byte_fallback: bool = False):
        self.chars: tuple[str, ...] = tuple(sorted(set(chars)))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary needs at least one single-character entry")
        self.byte_fallback = bool(byte_fallback)
        self.index = {c: i for i, c in enumerate(self.chars)}
        ascii_left = tuple(b for b in range(0x80) if chr(b) not in self.index)
        self.byte_values: tuple[int, ...] = ascii_left + HIGH_BYTES if self.byte_fallback else ()
        self.byte_ids = np.full(256, -1, dtype=np.int64)  # byte value -> its token id, -1 for none
        self.byte_ids[list(self.byte_values)] = len(self.chars) + np.arange(len(self.byte_values))

    def __len__(self) -> int:
        return len(self.chars) + len(self.byte_values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and (self.chars, self.byte_fallback) == (other.chars, other.byte_fallback)

    def __hash__(self) -> int:
        return hash((self.chars, self.byte_fallback))

    def __repr__(self) -> str:
        fallback = ", byte_fallback=True" if self.byte_fallback else ""
        return f"CharVocab({self.to_string()!r}{fallback})"

    def to_string(self) -> str:
        """The characters with their own token as one string, the form saved in checkpoints."""
        return "".join(self.chars)

    def unknown(self, text: Iterable[str]) -> list[str]:
        """Characters of ``text`` that cannot be encoded, in order of appearance (none with byte fallback)."""
        if self.byte_fallback:
            return []
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def check_known(self, text: Iterable[str], subject: str, remedy: str) -> None:
        """Raise ``UserError`` naming the characters of ``text`` the vocabulary cannot encode (the first ten)."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(f"{subject} has characters the model never saw: {shown}{more}; {remedy}")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; raises ``UserError`` naming characters it cannot encode."""
        self.check_known(text, "the text", f"expected text made of the model's {len(self)} characters")
        ids: list[int] = []
        for c in text:
            own = self.index.get(c)
            ids.extend([own] if own is not None else (int(self.byte_ids[b]) for b in c.encode("utf-8")))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; byte tokens are read as UTF-8 (an incomplete sequence at the end is dropped)."""
        return self.decoder()(ids)

    def token_names(self) -> tuple[str, ...]:
        """Each id's name, as OpenAI's logprobs name tokens: its character, or ``bytes:\\xNN``."""
        return self.chars + tuple(f"bytes:\\x{b:02x}" for b in self.byte_values)

    def decoder(self) -> TextDecoder:
        """A decoder that turns successive chunks of ids from one stream into text."""
        return TextDecoder(self)

    def char_starts(self) -> np.ndarray:
        """For each id, whether it begins a character: every own token, and the byte tokens that
        begin a UTF-8 sequence. Losses divide by these, so they stay per character (V,) bool."""
        starts = np.ones(len(self), dtype=bool)
        starts[len(self.chars) :] = (np.array(self.byte_values, dtype=np.int64) & 0xC0) != 0x80  # not a continuation
        return starts

    def merged(self, other: CharVocab) -> CharVocab:
        """A vocabulary that knows every character of both, with byte tokens if either has them: a
        base model's vocabulary grown by a new corpus's (a fine-tuning run)."""
        return CharVocab(self.chars + other.chars, self.byte_fallback or other.byte_fallback)

    def sources_in(self, base: CharVocab) -> list[tuple[int, ...]]:
        """For each id, the ids of ``base`` that write the same text: the one token of a character
        or byte ``base`` has; the byte tokens of a character's UTF-8 form where ``base`` writes it
        with bytes; none where ``base`` cannot write it."""
        sources: list[tuple[int, ...]] = []
        for c in self.chars:
            known = base.index.get(c)
            if known is not None:
                sources.append((known,))
            else:
                sources.append(tuple(int(base.byte_ids[b]) for b in c.encode("utf-8")) if base.byte_fallback else ())
        for b in self.byte_values:
            sources.append((int(base.byte_ids[b]),) if base.byte_ids[b] >= 0 else ())
        return sources

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id."""
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)

    @classmethod
    def from_counts(cls, counts: dict[str, int], max_vocab: int, byte_fallback: str = "auto") -> CharVocab:
        """The ``max_vocab`` commonest characters (ties: lower code point first) get their own token.

        ``byte_fallback``: "auto" adds byte tokens when some character is left out, "on" always.
        """
        ranked = sorted(counts, key=lambda c: (-counts[c], ord(c)))
        return cls(ranked[:max_vocab], byte_fallback=byte_fallback == "on" or len(ranked) > max_vocab)


class TextDecoder:
    """Ids of one stream, chunk by chunk, to text: byte tokens go through an incremental UTF-8
    decoder, so a character split between chunks comes out whole. Invalid byte sequences (a
    model can sample any byte) become U+FFFD; an incomplete one at the very end is dropped."""

    def __init__(self, vocab: CharVocab):
        self.chars = vocab.chars
        self.byte_fallback = vocab.byte_fallback
        self.utf8 = [c.encode("utf-8") for c in vocab.chars] + [bytes([b]) for b in vocab.byte_values]
        self.pending = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, ids: Iterable[int]) -> str:
        if not self.byte_fallback:
            return "".join(self.chars[i] for i in ids)
        return self.pending.decode(b"".join(self.utf8[i] for i in ids))
