"""The model and optimisation settings chosen for the budget, when the user leaves them unset.

The rule reads what the budget buys with the small preset (the defaults of ``ModelConfig`` and
``TrainConfig``, with any option the user set): characters of compute, and passes over the
training text. Little compute is spent best on a smaller, faster model trained on smaller chunks,
so more optimizer steps (``micro``, ``tiny``); a budget that would make the small model memorise
the text goes further with a larger model and stronger weight drop (``medium``), and an hour's
compute and more with two layers and locked dropout between them (``stacked``, two of 512, and
from more compute ``large``, two of 768). ``--max-steps`` and ``--epochs`` give the passes
directly; ``--max-time`` needs the speed of this machine, which ``probe.training_speed`` measures
on the small model with the real corpus's vocabulary (a large vocabulary counts through the size
of the head). The presets and thresholds come from the sweeps in ``docs/sweep.md`` (the
presets). Options the user sets win. ``sizing.py`` applies the rule to a new run. No torch here:
the help and ``info`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from charlstm.choices import ChosenBy, PresetName
from charlstm.config import DEFAULT_EPOCHS, ModelConfig, TrainConfig, train_options, training_configs
from charlstm.validate import DictRoundTrip


@dataclass(frozen=True)
class Preset:
    """Values of the sized options; ``small`` is exactly the configs' defaults (a test checks it)."""

    name: str
    layers: int
    hidden: int
    dropout: float
    weight_drop: float
    weight_decay: float
    lr: float
    batch_size: int
    seq_len: int
    eval_every: int
    save_every: int

    def options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SIZED}


# What a step is: the chunk it trains on, and the cadence in steps that keeps evaluations and saves
# every 2,048,000 characters with that chunk (so the cadence follows the preset only when the chunk
# does). Under --max-steps the budget is a number of updates, which a smaller chunk would only make
# cheaper, so auto leaves these as they are.
CHUNK_OPTIONS = ("batch_size", "seq_len")
CADENCE_OPTIONS = ("eval_every", "save_every")
STEP_OPTIONS = (*CHUNK_OPTIONS, *CADENCE_OPTIONS)
SIZED = tuple(d.name for d in train_options() if d.option.sized)  # what a preset sets, as the options declare
SHORT_STEPS = dict(batch_size=32, seq_len=64, eval_every=1000, save_every=1000)  # 2,048 characters a step
LONG_STEPS = dict(batch_size=64, seq_len=128, eval_every=250, save_every=250)  # 8,192
REGULARISED = dict(dropout=0.0, weight_decay=0.2, lr=3e-2)
LOCKED = {**REGULARISED, "dropout": 0.2}  # locked dropout between the layers and before the head
PRESETS = {
    p.name: p
    for p in (
        Preset("micro", layers=1, hidden=256, weight_drop=0.25, **REGULARISED, **SHORT_STEPS),
        Preset("tiny", layers=1, hidden=384, weight_drop=0.25, **REGULARISED, **SHORT_STEPS),
        Preset("small", layers=1, hidden=512, weight_drop=0.25, **REGULARISED, **LONG_STEPS),
        Preset("medium", layers=1, hidden=768, weight_drop=0.4, **REGULARISED, **LONG_STEPS),
        Preset("stacked", layers=2, hidden=512, weight_drop=0.5, **LOCKED, **LONG_STEPS),
        Preset("large", layers=2, hidden=768, weight_drop=0.5, **LOCKED, **LONG_STEPS),
    )
}
# From docs/sweep.md (the presets). Data: from this many passes over the text with the small
# model, it would memorise, and the medium model learns more per second (with weight drop, the
# small model still won at 30 passes and tied at 41 and 49).
MEDIUM_FROM_PASSES = 40.0
# Long budgets: from this many passes, with at least this much compute, two layers learn more than
# one: two of 512 where the 3600 s run that won bought the small model 152 passes of a 1M-character
# text (two of 512 had lost to one layer at 45), two of 768 where it bought 192 (at 152 they lost).
STACKED_FROM_PASSES = 140.0
STACKED_FROM_CHARS = 140_000_000
LARGE_FROM_PASSES = 180.0
LARGE_FROM_CHARS = 180_000_000
# Compute: below this many characters in the budget (with the small model), a smaller, faster
# model learns more, and a smaller chunk per step (four times the updates) more still; the best
# size grows with the compute, whatever the corpus's size.
SMALL_FROM_CHARS = 5_000_000
TINY_FROM_CHARS = 2_000_000


def default_text(name: str) -> str:
    """The default of a sized option, as ``--help`` shows it: "512", or "by --preset: 32
    micro/tiny, 64 small/medium"."""
    by_value: dict[Any, list[str]] = {}
    for preset in PRESETS.values():
        by_value.setdefault(getattr(preset, name), []).append(preset.name)
    if len(by_value) == 1:
        return f"{next(iter(by_value)):g}"
    return "by --preset: " + ", ".join(f"{v:g} {'/'.join(names)}" for v, names in by_value.items())


def preset_for(passes: float, chars: float) -> Preset:
    """The preset the sweep found best for a budget of ``passes`` over the text, ``chars``
    characters in all, with the small model."""
    if passes >= LARGE_FROM_PASSES and chars >= LARGE_FROM_CHARS:
        return PRESETS["large"]
    if passes >= STACKED_FROM_PASSES and chars >= STACKED_FROM_CHARS:
        return PRESETS["stacked"]
    if passes >= MEDIUM_FROM_PASSES:
        return PRESETS["medium"]
    if chars >= SMALL_FROM_CHARS:
        return PRESETS["small"]
    return PRESETS["tiny" if chars >= TINY_FROM_CHARS else "micro"]


def budget_passes(tcfg: TrainConfig, train_tokens: int, chars_per_s: float | None) -> float:
    """Passes over the training split the budget buys with the small model: the least of what
    ``--epochs``, ``--max-steps`` and ``--max-time`` (at ``chars_per_s``) allow; 10 without any."""
    limits = []
    if tcfg.epochs is not None:
        limits.append(tcfg.epochs)
    if tcfg.max_steps is not None:
        limits.append(tcfg.max_steps * tcfg.batch_size * tcfg.seq_len / train_tokens)
    if tcfg.max_time is not None and chars_per_s is not None:
        limits.append(tcfg.max_time * chars_per_s / train_tokens)
    return min(limits) if limits else DEFAULT_EPOCHS


def needs_speed(tcfg: TrainConfig, unset: frozenset[str]) -> bool:
    """Whether the choice depends on this machine's speed: a time budget, under ``auto``, with
    something left to choose."""
    return tcfg.preset == PresetName.AUTO and tcfg.max_time is not None and bool(fillable(tcfg, unset))


@dataclass(frozen=True)
class Sizing(DictRoundTrip):
    """What was chosen and why; saved in the checkpoint (``to_dict``) and said at the start."""

    preset: str
    chosen_by: str  # a ChosenBy
    passes: float | None  # what the budget buys with the small model (auto only)
    chars_per_s: float | None  # the small model's measured speed, for a time budget: the median pass
    applied: dict[str, Any] = field(default_factory=dict)  # options set from the preset
    kept: list[str] = field(default_factory=list)  # sized options the user set, which win
    default_budget: bool = False  # no budget was given: the default epochs
    speed_passes: list[float] = field(default_factory=list)  # each timed pass of the probe, chars/s
    from_base: dict[str, Any] = field(default_factory=dict)  # a fine-tuning run's shape, from its base
    fine_tuned: dict[str, Any] = field(default_factory=dict)  # the fine-tuning defaults it took
    by_reading: dict[str, Any] = field(default_factory=dict)  # and those moved by how far its text is
    base_loss: float | None = None  # how well the base read the text (events.Familiarity)
    guess_loss: float | None = None
    far: float | None = None  # how far the text is from the base's: 0 near, 1 far


def fillable(tcfg: TrainConfig, unset: frozenset[str]) -> frozenset[str]:
    """The sized options a preset may fill: those the user left unset, less what a step is when
    ``auto`` sizes for a step budget, and less the cadence when the user set the chunk."""
    filled = unset & frozenset(SIZED)
    if tcfg.preset == PresetName.AUTO and tcfg.max_steps is not None:
        filled -= frozenset(STEP_OPTIONS)
    if not filled >= frozenset(CHUNK_OPTIONS):
        filled -= frozenset(CADENCE_OPTIONS)
    return filled


def choose(
    tcfg: TrainConfig,
    unset: frozenset[str],
    train_tokens: int,
    chars_per_s: float | None,
    world: int = 1,
    fixed: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
) -> Sizing:
    """The preset for this run: ``--preset NAME``, or under ``auto`` the one the budget calls for;
    none when there is nothing left to fill. A chunk that ``world`` processes cannot share evenly
    is left as it is. ``fixed``: what a fine-tuning run took from its base and its defaults,
    which no preset changes (and the user did not set)."""
    filled, kept = fillable(tcfg, unset), [k for k in SIZED if k not in unset and not any(k in f for f in fixed)]
    if not filled:
        return Sizing("", ChosenBy.USER.value, None, None, {}, kept, from_base=fixed[0], fine_tuned=fixed[1])
    if tcfg.preset != PresetName.AUTO:
        preset, passes = PRESETS[tcfg.preset], None
    else:
        passes = budget_passes(tcfg, train_tokens, chars_per_s)
        preset = preset_for(passes, passes * train_tokens)
    if preset.batch_size % world:
        filled -= frozenset(STEP_OPTIONS)
    applied = {k: v for k, v in preset.options().items() if k in filled}
    by = ChosenBy.BUDGET if tcfg.preset == PresetName.AUTO else ChosenBy.PRESET
    speed = chars_per_s if passes is not None and tcfg.max_time is not None else None
    return Sizing(preset.name, by.value, passes, speed, applied, kept, not tcfg.has_budget, [], *fixed)


def apply(sizing: Sizing, tcfg: TrainConfig, mcfg: ModelConfig) -> tuple[TrainConfig, ModelConfig]:
    """The configs with the preset's values for the options the user left unset."""
    return training_configs(sizing.applied, (tcfg, mcfg))
