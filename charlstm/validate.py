"""The checks every config runs on its fields, with messages that name the option the user typed
(``--seq-len 0 is not valid, expected a whole number greater than 0``), and the plain values a
config is saved as."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from charlstm.choices import Choice
from charlstm.errors import UserError
from charlstm.options import option


def fail(name: str, value: object, accepted: str) -> UserError:
    return UserError(f"{option(name)} {value!r} is not valid, expected {accepted}")


def positive_int(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise fail(name, value, "a whole number greater than 0")


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
