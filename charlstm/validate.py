"""The checks every config runs on its fields, with messages that name the option the user typed
(``--seq-len 0 is not valid, expected a whole number greater than 0``), and the plain values a
config is saved as."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from charlstm.choices import Choice
from charlstm.errors import UserError
from charlstm.options import option

SHOWN_CHARS = 60  # of a value in a message: enough to recognise it, never a megabyte echoed back
SHOWN_DEPTH = 2  # levels of a nested value shown; deeper ones are [...] or {...}
SHOWN_ITEMS = 3  # items of a list or dict shown, then ...


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as a message shows it: its ``repr`` when that is short, else a form cut to about
    ``limit`` characters. It looks at most ``SHOWN_DEPTH`` levels into a list or dict and at a
    few items of each, so a value nested 950 deep (which JSON carries, and whose ``repr`` passes
    the recursion limit) or a string of a megabyte costs as little to show as ``0``."""
    text = _shown(value, SHOWN_DEPTH, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: object, depth: int, limit: int) -> str:
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        try:
            digits = str(value)
        except ValueError:  # past Python's limit on the digits of a str(int)
            return f"<a whole number of {value.bit_length():,} bits>"
        return digits if len(digits) <= limit else f"{digits[: limit // 2]}... ({len(digits):,} digits)"
    if isinstance(value, (str, bytes)):
        if len(value) <= limit:
            return repr(value[:])  # [:]: a str subclass (a Choice) shown as its text
        return f"{value[: limit // 2]!r}... ({len(value):,} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, (list, tuple, dict)):
        opening, closing = "{}" if isinstance(value, dict) else "()" if isinstance(value, tuple) else "[]"
        if not value:
            return opening + closing
        if depth == 0:
            return f"{opening}...{closing}"
        if isinstance(value, dict):
            pairs = itertools.islice(value.items(), SHOWN_ITEMS)
            parts = [f"{_shown(k, depth - 1, limit)}: {_shown(v, depth - 1, limit)}" for k, v in pairs]
        else:
            parts = [_shown(item, depth - 1, limit) for item in itertools.islice(value, SHOWN_ITEMS)]
        lone = "," if isinstance(value, tuple) and len(value) == 1 else ""  # (1,), as repr shows it
        return opening + ", ".join(parts + ["..."] * (len(value) > SHOWN_ITEMS)) + lone + closing
    try:
        text = repr(value)
    except Exception:  # a repr that fails, or recurses without end, is no reason for a message to fail
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def fail(name: str, value: object, accepted: str) -> UserError:
    return UserError(f"{option(name)} {shown(value)} is not valid, expected {accepted}")


def positive_int(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise fail(name, value, "a whole number greater than 0")


def whole(cfg: object, *names: str) -> None:
    """Refuse any of ``names`` that is not a whole number >= 0."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(name, value, "a whole number >= 0")


def optional_positive(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(name, value, "a number greater than 0")
        if not math.isfinite(value) or value <= 0:
            raise fail(name, value, "a number greater than 0")


def choice(cfg: object, name: str, choices: type[Choice]) -> None:
    value = getattr(cfg, name)
    if value not in choices.values():
        raise fail(name, value, "one of " + ", ".join(choices.values()))


MAX_SEED = 2**63 - 1


def check_seed(cfg: object) -> None:
    value = cfg.seed
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise fail("seed", value, f"a whole number from 0 to {MAX_SEED}")


def finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def plain(value: Any) -> Any:
    """``value`` with every ``Choice`` member (a ``str`` subclass) made a plain ``str``."""
    if isinstance(value, Choice):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


class DictRoundTrip:
    """``to_dict``/``from_dict`` for a dataclass saved in checkpoints as a plain dict."""

    def to_dict(self) -> dict:
        """The fields as plain values: a checkpoint holds no enum member (``weights_only`` refuses them)."""
        return {k: plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict):
        """Rebuild from a saved dict: keys this version does not know are ignored, and fields the
        dict lacks (added after it was written) take their defaults."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


def cell_ids(given: object) -> tuple[int, ...]:
    """Cell numbers as a tuple without repeats, from a sequence or the command line's "3,17,200"."""
    parts = given.split(",") if isinstance(given, str) else given
    try:
        ids = tuple(int(p) if isinstance(given, str) else p for p in parts)  # type: ignore[attr-defined]
    except (ValueError, TypeError):  # not a number, or not a sequence
        ids = ()
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise fail("cell_ids", given, "cell numbers >= 0, separated by commas (e.g. 3,17,200)")
    return tuple(dict.fromkeys(ids))


BIAS_LIMIT = 100  # |bias| at most this, as OpenAI's logit_bias; -100 bans


def _bias_value(name: str, given: object, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise fail(name, given, "biases from -100 to 100") from None
    if not finite(value) or not -BIAS_LIMIT <= value <= BIAS_LIMIT:  # type: ignore[operator]
        raise fail(name, given, "biases from -100 to 100")
    return float(value)  # type: ignore[arg-type]


def char_biases(given: object) -> tuple[tuple[str, float], ...]:
    """``--bias`` as (character, bias) pairs, from "e=-2,x=1.5": each entry is one character, "="
    and a number (so "," and "=" can be biased too: ",=-1")."""
    if not isinstance(given, str):
        raise fail("bias", given, "one string such as 'e=-2,x=1.5'")
    pairs, rest = [], given
    while rest:
        char, eq, tail = rest[:1], rest[1:2], rest[2:]
        number, comma, rest = tail.partition(",")
        if eq != "=" or not number:
            raise fail("bias", given, "character=bias pairs separated by commas, such as 'e=-2,x=1.5'")
        pairs.append((char, _bias_value("bias", given, number)))
        if comma and not rest:
            raise fail("bias", given, "character=bias pairs separated by commas, such as 'e=-2,x=1.5'")
    return tuple(pairs)


def id_biases(given: object) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as sorted (token id, bias) pairs, from a mapping (JSON's keys are strings),
    pairs, or the command line's "12=-2,40=1"."""
    if isinstance(given, str):
        items = [part.partition("=")[::2] for part in given.split(",")] if given else []
    elif isinstance(given, Mapping):
        items = list(given.items())
    elif isinstance(given, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in given):
        items = [tuple(p) for p in given]
    else:
        raise fail("logit_bias", given, "token ids mapped to biases from -100 to 100")
    pairs = {}
    for key, value in items:
        token = key
        if isinstance(key, str) and key.strip().isascii() and key.strip().isdecimal() and len(key.strip()) <= 9:
            token = int(key)
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise fail("logit_bias", given, "token ids (whole numbers >= 0) mapped to biases from -100 to 100")
        pairs[token] = _bias_value("logit_bias", given, value)
    return tuple(sorted(pairs.items()))
