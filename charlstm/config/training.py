"""The configs of a training run: the model's shape, how it trains, and how a run starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from charlstm.choices import (
    ByteFallback,
    Cell,
    DeviceName,
    Precision,
    PresetName,
    Schedule,
)
from charlstm.options import Declared, Panel, by_panel, declared, opt, split
from charlstm.validate import (
    DictRoundTrip,
    check_seed,
    choice,
    fail,
    finite,
    optional_positive,
    positive_int,
    whole,
)

DEFAULT_MAX_VOCAB = 128  # characters with their own token; chosen by measurement, see docs/sweep.md
PRESET_NAMES = tuple(p for p in PresetName.values() if p != PresetName.AUTO)  # as --help lists them
DATA, MODEL, OPTIM, BUDGET, OUTPUT, HW = Panel


@dataclass(frozen=True)
class ModelConfig(DictRoundTrip):
    """Shape of the network: embedding -> stacked recurrent cells -> linear head over the vocabulary."""

    vocab_size: int = 65  # follows from the corpus: not an option
    cell: str = opt(
        Cell.LSTM.value, "Recurrent cell: lstm, gru or peephole (an LSTM whose gates read c).", MODEL, from_base=True
    )
    layers: int = opt(
        1,
        "Recurrent layers, stacked (two in the stacked and large presets; see docs/sizing.md).",
        MODEL,
        sized=True,
        from_base=True,
    )
    hidden: int = opt(512, "Units per layer.", MODEL, sized=True, from_base=True)
    embedding: int = opt(64, "Character embedding size.", MODEL, from_base=True)
    dropout: float = opt(  # locked (variational), as AWD-LSTM's: net/dropout.py
        0.0,
        "Locked dropout between layers and before the head, the same units of a stream dropped at every step"
        " of a chunk, in [0, 1).",
        MODEL,
        sized=True,
    )
    weight_drop: float = opt(  # DropConnect on the recurrent weights, one mask per chunk (AWD-LSTM)
        0.25,
        "DropConnect on the recurrent weights, the same connections dropped at every step of a chunk, in [0, 1).",
        MODEL,
        sized=True,
        fine_tune=0.5,
        far_text=True,
    )
    embed_dropout: float = opt(0.0, "Drop whole characters' embeddings, a new choice each chunk, in [0, 1).", MODEL)

    def __post_init__(self) -> None:
        positive_int(self, "vocab_size", "embedding", "hidden", "layers")
        choice(self, "cell", Cell)
        for name in ("dropout", "weight_drop", "embed_dropout"):
            if not finite(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise fail(name, getattr(self, name), "a number in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(DictRoundTrip):
    """Data, optimisation, stopping and output settings of one training run."""

    corpus: str = opt("tinyshakespeare", "A text file, a folder of them, a quoted glob, or a known corpus name.", DATA)
    encoding: str = opt("utf-8", "Text encoding of the corpus file.", DATA)
    skip_bad_files: bool = opt(
        False, "Leave out the files of a folder or glob that are not text (listed in a warning).", DATA, shown="off"
    )
    max_vocab: int = opt(DEFAULT_MAX_VOCAB, "Characters with their own token, the commonest first.", DATA)
    byte_fallback: str = opt(
        ByteFallback.AUTO.value, "Byte tokens for other characters: auto (when some are left out) or on.", DATA
    )
    val_fraction: float = opt(0.1, "Contiguous tail of the corpus held out for validation.", DATA)
    init_from: str | None = opt(  # a fine-tuning run: training/finetune.py
        None,
        "Start a new run from this trained model (a run directory, .pt or .safetensors): its shape and weights,"
        " its characters and the corpus's.",
        MODEL,
        shown="none",
    )
    preset: str = opt(  # model size and regularisation for the budget: training/presets.py
        PresetName.AUTO.value,
        "Model, regularisation and chunk: auto (sized for the budget, corpus and machine speed),"
        f" {', '.join(PRESET_NAMES[:-1])} or {PRESET_NAMES[-1]}. Options you set win.",
        MODEL,
    )
    seq_len: int = opt(
        128,
        "Characters per chunk of truncated backpropagation through time (auto keeps {default} under --max-steps).",
        OPTIM,
        sized=True,
        fine_tune=64,
    )
    batch_size: int = opt(
        64,
        "Parallel contiguous streams per batch (auto keeps {default} under --max-steps).",
        OPTIM,
        sized=True,
        fine_tune=32,
    )
    lr: float = opt(3e-2, "Peak learning rate of AdamW.", OPTIM, sized=True, fine_tune=1e-2, far_text=True)
    weight_decay: float = opt(0.2, "AdamW weight decay on weight matrices.", OPTIM, sized=True)
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this (0: off).", OPTIM)
    average: float = opt(  # averaged weights for evaluation (AWD-LSTM): training/average.py
        0.0,
        "Also evaluate an average of the weights over about this share of the run's last steps, and keep"
        " it in best.pt when it evaluates better (0: off).",
        OPTIM,
    )
    schedule: str = opt(Schedule.COSINE.value, "Learning-rate schedule: cosine, step, plateau or constant.", OPTIM)
    warmup_steps: int = opt(50, "Steps of linear learning-rate warm-up.", OPTIM, fine_tune=20)
    freeze_embedding: float = opt(
        0.0,
        "Keep the character embedding as it is for this share of the run (0: never).",
        OPTIM,
        fine_tune=0.0,
    )
    min_lr_ratio: float = opt(0.05, "Floor of the cosine/plateau schedule, as a fraction of --lr.", OPTIM)
    max_steps: int | None = opt(None, "Stop after this many optimizer steps.", BUDGET, shown="none", resumable=True)
    epochs: float | None = opt(
        None,
        "Stop after this many passes over the training split (10 when no budget is given).",
        BUDGET,
        resumable=True,
    )
    max_time: float | None = opt(
        None,
        "Stop after this many seconds; the schedule anneals over this budget.",
        BUDGET,
        shown="none",
        resumable=True,
    )
    out: str | None = opt(
        None, "Run directory for best.pt, last.pt and metrics.jsonl.", OUTPUT, shown="checkpoints/<corpus name>"
    )
    eval_every: int = opt(
        250,
        "Evaluate and save every N steps (auto keeps {default} under --max-steps).",
        OUTPUT,
        resumable=True,
        sized=True,
        fine_tune=50,  # often enough to keep the best before a small text is memorised (docs/sweep.md)
    )
    eval_chars: int = opt(  # of the validation split, per evaluation: 3.8 s of a 1x512 model on 2 cores
        500_000, "Tokens of the validation split each evaluation reads.", OUTPUT, resumable=True, fine_tune=50_000
    )
    save_every: int = opt(
        250, "Write last.pt every N steps (auto keeps {default} under --max-steps).", OUTPUT, resumable=True, sized=True
    )
    log_every: int = opt(10, "Report training loss and speed every N steps.", OUTPUT, resumable=True)
    sample_chars: int = opt(200, "Characters of sample shown at each evaluation (0: none).", OUTPUT, resumable=True)
    tensorboard: bool = opt(  # a resume may turn it on: the log then starts with the run's metrics so far
        False,
        "Also write the metrics and the previews into the run directory as a TensorBoard log (needs the"
        " tensorboard extra).",
        OUTPUT,
        shown="off",
        resumable=True,
    )
    seed: int = opt(1337, "Random seed: the same seed repeats a CPU run.", HW)
    device: str = opt(DeviceName.AUTO.value, "auto, cpu, cuda or mps.", HW, resumable=True)
    precision: str = opt(Precision.AUTO.value, "auto (measured: the faster of the two), fp32 or bf16.", HW)

    def __post_init__(self) -> None:
        if not finite(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise fail("val_fraction", self.val_fraction, "a number between 0 and 1")
        positive_int(self, "seq_len", "batch_size", "eval_every", "save_every", "log_every", "max_vocab", "eval_chars")
        choice(self, "byte_fallback", ByteFallback)
        choice(self, "preset", PresetName)
        if not finite(self.lr) or self.lr <= 0:
            raise fail("lr", self.lr, "a learning rate greater than 0")
        for name in ("average", "freeze_embedding"):  # shares of the run
            if not finite(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise fail(name, getattr(self, name), "a share of the run in [0, 1] (0 turns it off)")
        for name in ("weight_decay", "grad_clip"):
            if not finite(getattr(self, name)) or getattr(self, name) < 0:
                raise fail(name, getattr(self, name), "a number >= 0 (0 turns it off)")
        whole(self, "warmup_steps", "sample_chars")
        if not finite(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise fail("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        optional_positive(self, "max_steps", "epochs", "max_time")
        if self.max_steps is not None and int(self.max_steps) != self.max_steps:
            raise fail("max_steps", self.max_steps, "a whole number greater than 0")
        check_seed(self)
        choice(self, "schedule", Schedule)
        choice(self, "device", DeviceName)
        choice(self, "precision", Precision)
        if not self.corpus:
            raise fail("corpus", self.corpus, "a corpus name or a path to a UTF-8 text file")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise fail("init_from", self.init_from, "a run directory or a checkpoint file")

    @property
    def has_budget(self) -> bool:
        """Whether any stopping criterion was given."""
        return any(v is not None for v in (self.max_steps, self.epochs, self.max_time))


@dataclass(frozen=True)
class StartConfig:
    """How ``charlstm train`` starts: afresh, or resuming a run. Not saved: it is not the run's."""

    resume: str | None = opt(
        None,
        "Continue the run in this directory (or from this last.pt) exactly where it stopped.",
        OUTPUT,
        shown="none",
    )
    overwrite: bool = opt(False, "Start afresh in a run directory that already holds a run.", OUTPUT, negatable=True)


TRAINING = (TrainConfig, ModelConfig)  # the configs a training run saves, in the order their options are listed


def train_options() -> tuple[Declared, ...]:
    """Every option of ``charlstm train`` (and of ``charlstm.train``), grouped as ``--help`` shows them."""
    return by_panel(declared(*TRAINING, StartConfig))


def training_configs(
    values: Mapping[str, Any], base: tuple[TrainConfig, ModelConfig] | None = None
) -> tuple[TrainConfig, ModelConfig]:
    """The configs of a training run from its options by name (``vocab_size`` too), over ``base``
    (the defaults, unless given)."""
    tcfg, mcfg = base or (TrainConfig(), ModelConfig())
    train, model = split(values, *TRAINING)
    return TrainConfig.from_dict({**tcfg.to_dict(), **train}), ModelConfig.from_dict({**mcfg.to_dict(), **model})


DEFAULT_EPOCHS = 10.0  # used when none of --max-steps, --epochs, --max-time is given
