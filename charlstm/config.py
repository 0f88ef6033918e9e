"""Configuration dataclasses, one per concern, validated once when they are built. Field names are
the command-line options (``seq_len`` is ``--seq-len``) and the API's keywords; each option is
declared in its field's metadata (``opt``, see ``options.py``), from which the command line,
config files, the API and the docs are built. Every config is saved in every checkpoint as a
plain dict (``to_dict``), rebuilt by ``from_dict``, which tolerates fields added or dropped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from charlstm.choices import (
    ByteFallback,
    Cell,
    DeviceName,
    ExplainValue,
    Precision,
    PresetName,
    Schedule,
    Split,
    Unknown,
)
from charlstm.errors import UserError
from charlstm.options import Declared, Panel, by_panel, declared, opt, split
from charlstm.validate import (
    DictRoundTrip,
    cell_ids,
    check_seed,
    choice,
    fail,
    finite,
    optional_positive,
    positive_int,
    whole,
)

DEFAULT_MAX_VOCAB = 128  # characters with their own token; chosen by measurement, see docs/sweep.md
MAX_SAMPLES = 100_000
DATA, MODEL, OPTIM, BUDGET, OUTPUT, HW = Panel


@dataclass(frozen=True)
class ModelConfig(DictRoundTrip):
    """Shape of the network: embedding -> stacked recurrent cells -> linear head over the vocabulary."""

    vocab_size: int = 65  # follows from the corpus: not an option
    cell: str = opt(
        Cell.LSTM.value, "Recurrent cell: lstm, gru or peephole (an LSTM whose gates read c).", MODEL, from_base=True
    )
    layers: int = opt(
        1, "Recurrent layers, stacked (every preset has one; see docs/sweep.md).", MODEL, sized=True, from_base=True
    )
    hidden: int = opt(512, "Units per layer.", MODEL, sized=True, from_base=True)
    embedding: int = opt(64, "Character embedding size.", MODEL, from_base=True)
    dropout: float = opt(0.0, "Dropout between layers and before the head, in [0, 1).", MODEL, sized=True)
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
        " micro, tiny, small or medium. Options you set win.",
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


@dataclass(frozen=True)
class SampleConfig(DictRoundTrip):
    """How text is drawn from a trained model."""

    prompt: str = opt("", "Text the model continues (printed first).")
    length: int = opt(500, "Tokens to generate per sample (characters, unless some are byte tokens).")
    temperature: float = opt(0.8, "Softmax temperature; 0 means greedy (always the likeliest).")
    top_k: int | None = opt(None, "Sample only among the k likeliest characters.")
    top_p: float | None = opt(None, "Sample only within the smallest set of probability >= p.")
    seed: int | None = opt(None, "Random seed; the same seed gives the same text.", shown="random")
    num_samples: int = opt(1, "How many samples to draw.")
    unknown: str = opt(
        Unknown.ERROR.value, "Prompt characters the model never saw: error, or skip them with a warning."
    )
    precision: str = opt(
        Precision.AUTO.value,
        "Weights the sampling step reads: fp32 (exact), bf16 (half the bytes to read: up to twice as "
        "fast), or auto (the precision the model trained in).",
    )

    def __post_init__(self) -> None:
        whole(self, "length")
        if not finite(self.temperature) or self.temperature < 0:
            raise fail("temperature", self.temperature, "a number >= 0 (0 means greedy)")
        if self.top_k is not None:
            whole(self, "top_k")
        if self.top_p is not None and (not finite(self.top_p) or not 0 < self.top_p <= 1):
            raise fail("top_p", self.top_p, "a number in (0, 1]")
        positive_int(self, "num_samples")
        if self.num_samples > MAX_SAMPLES:  # drawn side by side: each one holds its own state
            raise fail("num_samples", self.num_samples, f"at most {MAX_SAMPLES:,} per call")
        check_seed(self)
        choice(self, "unknown", Unknown)
        choice(self, "precision", Precision)


@dataclass(frozen=True)
class ServeConfig(DictRoundTrip):
    """How ``charlstm serve`` listens and what it allows one request."""

    host: str = opt("127.0.0.1", "Address to listen on (0.0.0.0: every interface; then set --api-key).")
    port: int = opt(8000, "Port to listen on (0: any free one; the start line says which).")
    api_key: str | None = opt(
        None, "Require 'Authorization: Bearer KEY' on the API (or set CHARLSTM_API_KEY).", shown="none"
    )
    max_streams: int = opt(64, "Completions generated at once; more wait in the queue.")
    max_queue: int = opt(256, "Completions that may wait for a place; past that, requests get 429.")
    max_tokens: int = opt(4096, "Most tokens one completion may ask for.")
    max_prompt: int = opt(16_384, "Most characters in one prompt.")
    precision: str = opt(
        Precision.AUTO.value, "Weights the step reads: fp32, bf16, or auto (the precision the model trained in)."
    )
    quiet: bool = opt(False, "Leave out the log line of each request.")
    header_timeout: float = opt(
        10.0, "Seconds a connection has to send a complete request head (from opening, and after each answer)."
    )
    max_connections: int = opt(512, "Connections open at once; past that, new ones get 503 and are closed.")

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise fail("host", self.host, "an address such as 127.0.0.1")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise fail("port", self.port, "a port number from 0 to 65535")
        if self.api_key is not None and (
            not isinstance(self.api_key, str) or not self.api_key or self.api_key != self.api_key.strip()
        ):
            raise fail("api_key", self.api_key, "a key without spaces at either end")
        positive_int(self, "max_streams", "max_queue", "max_tokens", "max_prompt", "max_connections")
        if not finite(self.header_timeout) or self.header_timeout <= 0:
            raise fail("header_timeout", self.header_timeout, "a number of seconds greater than 0")
        choice(self, "precision", Precision)


@dataclass(frozen=True)
class EvalConfig(DictRoundTrip):
    """What ``charlstm eval`` measures: a checkpoint's own corpus or another text, and which part."""

    corpus: str | None = opt(  # None: the checkpoint's own corpus
        None, "Text file (or known corpus name) to measure.", shown="the checkpoint's corpus"
    )
    split: str | None = opt(  # None: "val" on the checkpoint's own corpus, "all" on another text
        None, "all, train or val (the checkpoint's --val-fraction tail).", shown="val without --corpus, all with it"
    )
    encoding: str | None = opt(  # None: the checkpoint's encoding on its own corpus, utf-8 on another
        None, "Text encoding of the text.", shown="the checkpoint's without --corpus, utf-8 with it"
    )
    seq_len: int = opt(256, "Characters per evaluation chunk (state is carried across chunks).")
    unknown: str = opt(
        Unknown.ERROR.value, "Characters a model without byte tokens cannot read: error, or skip them (counted)."
    )
    max_chars: int | None = opt(None, "Measure this many tokens, spread over the text.", shown="all")  # None: all
    skip_bad_files: bool = opt(False, "Leave out the files of a folder that are not text.")

    def __post_init__(self) -> None:
        if self.split is not None:
            choice(self, "split", Split)
        positive_int(self, "seq_len")
        choice(self, "unknown", Unknown)
        if self.max_chars is not None:
            positive_int(self, "max_chars")

    @property
    def part(self) -> str:
        """The split measured once the default is applied."""
        return self.split or (Split.ALL if self.corpus else Split.VAL)


EXPLAIN_CELLS = 6  # blocks on the page unless told: as many as there are text features


@dataclass(frozen=True)
class ExplainConfig:
    """What ``charlstm explain`` reads, which cells it shows and where the page goes."""

    text: str = opt(..., "Text file to read through the model.")  # required: a path
    out: str = opt(..., "The HTML page to write (one self-contained file).")  # required: a path
    chars: int = opt(10_000, "Read and show the first N characters of the text.")
    cells: int | None = opt(  # None: EXPLAIN_CELLS, each feature's best cell, then the most varied
        None,
        "Cells to show: the one that follows each text feature best, then those whose values vary most.",
        shown=f"{EXPLAIN_CELLS}",
    )
    cell_ids: tuple[int, ...] | None = opt(  # a comma-separated string is accepted
        None,
        "Show these cells instead, comma-separated, numbered over the layers (with --hidden H, the second"
        " layer's first unit is cell H).",
        shown="found automatically",
    )
    value: str | None = opt(  # None: cell, hidden for a GRU
        None,
        "What colours a character: cell (tanh of the cell state after it) or hidden (the hidden output).",
        shown="cell; hidden for a GRU",
    )
    encoding: str = opt("utf-8", "Text encoding of the text file.")
    overwrite: bool = opt(False, "Replace the page at --out if it already exists.")

    def __post_init__(self) -> None:
        positive_int(self, "chars")
        if self.cells is not None:
            positive_int(self, "cells")
            if self.cell_ids is not None:
                raise UserError("--cells and --cell-ids cannot be used together, expected one of them")
        if self.value is not None:
            choice(self, "value", ExplainValue)
        if self.cell_ids is not None:
            object.__setattr__(self, "cell_ids", cell_ids(self.cell_ids))

    @property
    def blocks(self) -> int:
        """How many cells to show when the cells are found automatically."""
        return self.cells or EXPLAIN_CELLS
