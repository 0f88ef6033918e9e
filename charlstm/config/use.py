"""The configs of using a trained model: sampling, serving, evaluating and explaining it."""

from __future__ import annotations

from dataclasses import dataclass

from charlstm.choices import (
    ExplainValue,
    Precision,
    Split,
    Unknown,
)
from charlstm.errors import UserError
from charlstm.options import Panel, opt
from charlstm.validate import (
    DictRoundTrip,
    cell_ids,
    char_biases,
    check_seed,
    choice,
    fail,
    finite,
    id_biases,
    positive_int,
    whole,
)

MAX_SAMPLES = 100_000
MAX_WINDOW = 4096  # the most recent tokens a repetition penalty may read
PENALTY_LIMIT = 2.0  # |presence_penalty| and |frequency_penalty| at most this, as OpenAI's
DATA, MODEL, OPTIM, BUDGET, OUTPUT, HW = Panel


@dataclass(frozen=True)
class SampleConfig(DictRoundTrip):
    """How text is drawn from a trained model."""

    prompt: str = opt("", "Text the model continues (printed first).")
    length: int = opt(500, "Tokens to generate per sample (characters, unless some are byte tokens).")
    temperature: float = opt(0.8, "Softmax temperature; 0 means greedy (always the likeliest).")
    top_k: int | None = opt(None, "Sample only among the k likeliest characters.")
    top_p: float | None = opt(None, "Sample only within the smallest set of probability >= p.")
    min_p: float | None = opt(None, "Sample only among characters at least this fraction as likely as the likeliest.")
    presence_penalty: float = opt(0.0, "Lower every character already written by this (-2 to 2, OpenAI's).")
    frequency_penalty: float = opt(0.0, "Lower a character by this for each time it was written (-2 to 2, OpenAI's).")
    repetition_penalty: float = opt(
        1.0,
        "Divide the positive logits of the characters among the last --repetition-window tokens (the "
        "prompt's included) by this, multiply the negative ones (> 0; 1 is off; llama.cpp's and vLLM's).",
    )
    repetition_window: int = opt(64, f"How many recent tokens --repetition-penalty reads (1 to {MAX_WINDOW:,}).")
    ban: str = opt("", "Characters never to write, e.g. '@#'.", shown="none")
    bias: str = opt("", "Added to characters' logits: 'e=-2,x=1.5' (-100 to 100; -100 bans).", shown="none")
    logit_bias: tuple[tuple[int, float], ...] = opt(
        (), "Added to tokens' logits by id (OpenAI's logit_bias): '12=-2,40=1', ids as info lists them.", shown="none"
    )
    logprobs: int | None = opt(
        None, "Write JSON lines instead: each token, its log-probability and the N likeliest in its place.", shown="off"
    )
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
        if self.min_p is not None and (not finite(self.min_p) or not 0 <= self.min_p <= 1):
            raise fail("min_p", self.min_p, "a number in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not finite(getattr(self, name)) or not -PENALTY_LIMIT <= getattr(self, name) <= PENALTY_LIMIT:
                raise fail(name, getattr(self, name), f"a number from -{PENALTY_LIMIT:g} to {PENALTY_LIMIT:g}")
        if not finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise fail("repetition_penalty", self.repetition_penalty, "a number > 0 (1 is off)")
        positive_int(self, "repetition_window")
        if self.repetition_window > MAX_WINDOW:
            raise fail("repetition_window", self.repetition_window, f"at most {MAX_WINDOW:,}")
        if not isinstance(self.ban, str):
            raise fail("ban", self.ban, "the characters to ban, as one string")
        char_biases(self.bias)
        object.__setattr__(self, "logit_bias", id_biases(self.logit_bias))
        if self.logprobs is not None:
            whole(self, "logprobs")
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
    dynamic: bool = opt(
        False,
        "Also measure with dynamic evaluation: the model learns from the text as it reads it (Krause et al.), "
        "its rates fitted once on the training split and kept in the checkpoint.",
    )

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
