"""Sampling: the rules that pick each character (temperature, top-k, top-p), the prompt, the seed,
and the one generation API, :func:`draw_samples`, which draws any number of samples side by side
through ``Slots``, the stepping a server's requests share: sample *i* of a seed draws with that
seed's generator *i* (:func:`stream_rng`), so it is the same text alone, among others, or as a
server's choice *i*.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from charlstm.choices import STEP_PRECISIONS
from charlstm.config import ModelConfig, SampleConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, State
from charlstm.sampling.scoring import named
from charlstm.sampling.slots import RANDOM_BLOCK, Slots
from charlstm.sampling.stepper import Stepper
from charlstm.validate import BIAS_LIMIT, char_biases

COMPILE_PATIENCE = 3.0  # seconds: Numba loads its cached kernels in about 1 s; a first compile takes 25-30 s
PIECE_TOKENS = RANDOM_BLOCK  # characters per sample drawn per call: text still streams out, calls stay few


@dataclass(frozen=True)
class SamplingRule:
    """How one stream picks each token: temperature (0 means greedy), top-k (None or 0: off), top-p
    (None or 1: off), min-p (None or 0: off), presence, frequency and repetition penalties (the
    last over a window of recent tokens), biases by token id (-100 bans), and how many of the
    likeliest tokens to report with their log-probabilities (None: none)."""

    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    window: int = 64
    bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None

    @classmethod
    def of(cls, cfg: SampleConfig, vocab: CharVocab) -> SamplingRule:
        """The rule of ``cfg``, its characters' biases (``ban``, ``bias``) turned into token ids."""
        bias = dict(cfg.logit_bias)
        for char, value in (*char_biases(cfg.bias), *((c, -BIAS_LIMIT) for c in cfg.ban)):  # a ban wins
            if char not in vocab.index:
                flag = "--ban" if value == -BIAS_LIMIT and char in cfg.ban else "--bias"
                raise UserError(f"{flag} {char!r} is not a character of this model (it has no token of its own)")
            bias[vocab.index[char]] = value
        for token in bias:
            if token >= len(vocab):
                raise UserError(
                    f"--logit-bias {token} is not a token of this model: its ids go from 0 to {len(vocab) - 1}"
                )
        if sum(value <= -BIAS_LIMIT for value in bias.values()) == len(vocab):
            given = [
                flag
                for flag, value in (("--logit-bias", cfg.logit_bias), ("--ban", cfg.ban), ("--bias", cfg.bias))
                if value
            ]
            raise UserError(f"{' and '.join(given)} leave no token to write: each one is banned")
        if cfg.logprobs is not None and cfg.logprobs > len(vocab):
            raise UserError(f"--logprobs {cfg.logprobs} is more than this model's {len(vocab)} tokens")
        penalties = cfg.presence_penalty, cfg.frequency_penalty, cfg.repetition_penalty, cfg.repetition_window
        return cls(
            cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, *penalties, tuple(sorted(bias.items())), cfg.logprobs
        )

    @property
    def greedy(self) -> bool:
        """Whether every draw is the likeliest character, so that no seed changes the text."""
        return self.temperature == 0 or self.top_k == 1

    def args(self) -> tuple[float, ...]:
        """The rule as the compiled kernels take it: a row of ``kernels.RULE_COLUMNS`` numbers."""
        top_k = min(int(self.top_k or 0), 1 << 31)  # any k past the vocabulary keeps everything
        window = self.window if self.repetition != 1.0 else 0  # nothing to look back at
        return (float(self.temperature), float(top_k), 1.0 if self.top_p is None else float(self.top_p),
                float(self.min_p or 0.0), float(self.presence), float(self.frequency), float(self.repetition),
                float(window), -1.0 if self.logprobs is None else float(self.logprobs))  # fmt: skip

    def bias_row(self, vocab: int) -> np.ndarray:
        """The bias of every token id (V,): -inf where it bans."""
        row = np.zeros(vocab, np.float32)
        for token, value in self.bias:
            row[token] = -np.inf if value <= -BIAS_LIMIT else value
        return row


@dataclass
class Samples:
    """Samples being drawn. Everything but ``pieces`` is known before the first character."""

    seed: int  # the seed used: the given one, or a random one to print so the text can be repeated
    prompt: str  # the prompt as the model reads it (characters it never saw dropped under "skip")
    dropped: list[str]  # prompt characters dropped
    pieces: Iterator[list[str]]  # the next piece of every sample, up to PIECE_TOKENS characters each
    seeded: bool = True  # whether the seed decides the text (not under a greedy rule)
    # With logprobs: the tokens of the latest piece of every sample, each as OpenAI's legacy logprobs
    # name it (token, logprob, top_logprobs, text_offset in the sample's text past the prompt).
    scores: list[list[dict[str, Any]]] = field(default_factory=list)


def choose_seed(seed: int | None) -> int:
    """The given seed, or a fresh random one (32 bits, easy to retype)."""
    return seed if seed is not None else int.from_bytes(os.urandom(4), "little")


def stream_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample (or choice) ``index`` under ``seed``: its own, whatever else runs."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def prepare_prompt(vocab: CharVocab, prompt: str, unknown: str = "error") -> tuple[str, list[str]]:
    """The prompt to use and the characters dropped from it (``unknown="skip"``); with byte
    fallback every character can be read, so nothing is dropped."""
    if unknown != "skip":
        vocab.check_known(
            prompt, "--prompt", "use only characters of the training text, or --unknown skip to drop them"
        )
    dropped = vocab.unknown(prompt)
    return "".join(c for c in prompt if c not in dropped), dropped


def priming_ids(vocab: CharVocab, prompt: str) -> list[int]:
    """Ids the model reads before generating: a newline (text starts on a fresh line), then the prompt."""
    newline = "\n" if not prompt.startswith("\n") and not vocab.unknown("\n") else ""
    return vocab.encode(newline + prompt) or [0]


def _ids_after(
    stepper: Stepper, ids: list[int], streams: int, length: int, rule: SamplingRule, seed: int, start: State | None
) -> Iterator[tuple[np.ndarray, ...]]:
    """After reading ``ids`` from ``start``, yield the next ids of ``streams`` samples, (streams, n)
    at a time with n <= PIECE_TOKENS (``length`` per sample in all), and their scores (``Slots``'
    logprobs, top_ids and top_logprobs) when the rule asks for them."""
    if length <= 0:
        return
    slots = Slots(stepper, streams)
    try:
        primed = stepper.start(ids, start)
        for i in range(streams):
            slots.add(primed, rule, stream_rng(seed, i), ids)
        for begin in range(0, length, PIECE_TOKENS):
            yield slots.draw(min(PIECE_TOKENS, length - begin)), slots.logprobs, slots.top_ids, slots.top_logprobs
    finally:
        slots.close()


def draw_samples(stepper: Stepper, vocab: CharVocab, cfg: SampleConfig, start: State | None = None) -> Samples:
    """``cfg.num_samples`` samples continuing ``cfg.prompt`` (not repeated in the pieces), drawn
    side by side, ``cfg.length`` characters each, from ``start`` (see ``Checkpoint.warm_state``).

    The stepper fixes the precision (``cfg.precision`` is for whoever builds it). The same seed
    and precision give the same text for sample *i*, whatever the number of samples.
    """
    prompt, dropped = prepare_prompt(vocab, cfg.prompt, cfg.unknown)
    seed, rule = choose_seed(cfg.seed), SamplingRule.of(cfg, vocab)
    ids = _ids_after(stepper, priming_ids(vocab, prompt), cfg.num_samples, cfg.length, rule, seed, start)
    samples = Samples(seed, prompt, dropped, iter(()), seeded=not rule.greedy)
    samples.pieces = _pieces(ids, vocab, cfg.num_samples, samples if rule.logprobs is not None else None)
    return samples


def _pieces(drawn: Iterator[tuple[np.ndarray, ...]], vocab: CharVocab, streams: int,
            scored: Samples | None) -> Iterator[list[str]]:  # fmt: skip
    """Each chunk's text for every sample; with ``scored``, its tokens' scores go to ``scored.scores``."""
    decoders = [vocab.decoder() for _ in range(streams)]  # a character may span two chunks
    names, written = vocab.token_names(), [0] * streams
    for chunk, logprobs, top_ids, top_logprobs in drawn:
        if scored is None:
            yield [decode(row) for decode, row in zip(decoders, chunk, strict=True)]
            continue
        texts, scored.scores = [], [[] for _ in range(streams)]
        for i, (decode, row) in enumerate(zip(decoders, chunk.tolist(), strict=True)):
            parts = [decode([token]) for token in row]  # one at a time: where each token's text starts
            for k, (token, text) in enumerate(zip(row, parts, strict=True)):
                top = named(names, top_ids[i, k], top_logprobs[i, k])
                record = {"token": names[token], "logprob": float(logprobs[i, k]), "top_logprobs": top}
                scored.scores[i].append({**record, "text_offset": written[i]})
                written[i] += len(text)
            texts.append("".join(parts))
        yield texts


def compile_kernels(on_slow: Callable[[], None] | None = None) -> float:
    """Compile everything sampling runs, in both precisions, for one stream and for many (or load
    it from Numba's on-disk cache, well under a second): about 12 s the first time on a 2-core CPU.
    ``on_slow`` is called once the work has outlasted ``COMPILE_PATIENCE`` (a first compile, not a
    load), so that a front end can say what it waits for. Returns the seconds it took."""
    started = time.perf_counter()
    if on_slow is None:
        _compile()
        return time.perf_counter() - started
    failed: list[BaseException] = []

    def work() -> None:
        try:
            _compile()
        except BaseException as e:  # raised again in the caller's thread
            failed.append(e)

    worker = threading.Thread(target=work, name="charlstm-compile", daemon=True)
    worker.start()
    worker.join(COMPILE_PATIENCE)
    if worker.is_alive():
        on_slow()
        worker.join()
    if failed:
        raise failed[0]
    return time.perf_counter() - started


def _compile() -> None:
    with torch.random.fork_rng(devices=[]):  # a run's random state must not move
        tiny = CharLSTM(ModelConfig(vocab_size=3, embedding=2, hidden=2, layers=2)).eval()
        rule = SamplingRule(1.0, 2, 0.9)
        for precision in STEP_PRECISIONS:
            stepper = Stepper(tiny, precision)
            _ = stepper.rows_match  # compiles the check (an assert would vanish under -O)
            for streams in (1, 2):
                list(_ids_after(stepper, [0], streams, 2, rule, 0, None))
