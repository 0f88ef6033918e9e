"""A fine-tuning run (``--init-from``): a new run whose model starts from a trained base's.

The base gives the model's shape (the options declared ``from_base``); the options declared
with a ``fine_tune`` default take it unless given; the rest (regularisation, chunk, budget,
output) are set or sized as in any run. The vocabulary is the base's grown by the new corpus's
(``CharVocab.merged``), and the weights are the base's, row for row where a token writes what a
token of the base wrote; a new token's rows start from what the base knew of its text:

- embedding: the mean of the base's rows for the bytes of its UTF-8 form (a base with byte
  tokens), else the mean of all the base's rows;
- output (head): an ASCII character the base wrote as its byte token takes that token's rows
  whole; a character the base wrote as several bytes takes its first byte's row, and that
  byte's probability is shared evenly between the byte and the new characters that begin with
  it (the bias less log(n + 1), the byte's own too); a row the base had nothing for (a base
  without byte tokens: each new character, and each byte token when the new text needs them)
  takes the mean of the base's character rows with the rarest character's bias less log(n) for
  n such rows, so that together they start as likely as that one rare character.

The run records its base (``lineage``): the file's sha256, its corpus, its steps, and its own base.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlstm.config import ModelConfig, TrainConfig, train_options, training_configs
from charlstm.data.corpus import Reading, TokenizedCorpus, load_corpus, load_in_vocab
from charlstm.data.sources import CorpusSource, ProgressFn
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.options import option
from charlstm.store.checkpoint import Checkpoint, Lineage, find_checkpoint, load_checkpoint
from charlstm.training.events import VocabMerge

FROM_BASE = tuple(d.name for d in train_options() if d.option.from_base)  # the model's shape
FINE_TUNE = {d.name: d.fine_tuned for d in train_options() if d.fine_tuned is not None}  # where they differ
HASH_BLOCK = 1 << 20
COUNT_BLOCK = 1 << 24  # tokens counted at a time


@dataclass(frozen=True)
class Base:
    """The trained model a fine-tuning run starts from, and what the run records of it."""

    checkpoint: Checkpoint
    lineage: Lineage  # what the new run records of it


@dataclass(frozen=True)
class FineTuneStart:
    """A fine-tuning run's configs, and what was set for it rather than by the user or a preset."""

    tcfg: TrainConfig
    mcfg: ModelConfig
    unset: frozenset[str]  # the sized options a preset may still fill
    from_base: dict[str, Any]  # the shape, from the base
    fine_tuned: dict[str, Any]  # the fine-tuning defaults applied (options the user left unset)


def file_sha256(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_base(spec: str, run_dir: Path) -> Base:
    """The base checkpoint (a run directory means its best.pt), read as any checkpoint is (older
    formats migrated, nothing but plain data accepted); it is only ever read, so a new run in
    its own run directory (``run_dir``), which would replace it, is refused. The file is hashed
    before and after it is read, so the lineage names the weights the run starts from."""
    path = find_checkpoint(spec)
    if path.resolve().parent == run_dir.resolve():
        raise UserError(
            f"--out {str(run_dir)!r} is the base's own run directory, and a new run there would replace "
            f"{path.name}; a run started with --init-from writes its own, so give another --out"
        )
    sha256 = file_sha256(path)
    ckpt = load_checkpoint(path)
    ckpt.build_model()  # refuse now a base whose weights do not fit its config
    if file_sha256(path) != sha256:
        raise UserError(f"the base {str(path)!r} changed while it was read (is its run still training?); try again")
    corpus = ckpt.corpus or {}
    where = str(path.absolute())  # a lineage is read from anywhere
    lineage = Lineage(where, sha256, ckpt.progress.step, corpus.get("path"), corpus.get("sha256"), ckpt.lineage)
    return Base(ckpt, lineage)


def start(
    tcfg: TrainConfig, mcfg: ModelConfig, given: frozenset[str], unset: frozenset[str], base: Base
) -> FineTuneStart:
    """The configs of a run fine-tuned from ``base``: its shape (a given option that differs is
    refused, naming the base's value), the fine-tuning defaults for the options left unset."""
    shape = {name: getattr(base.checkpoint.model_config, name) for name in FROM_BASE}
    for name in sorted(given & shape.keys()):
        if getattr(mcfg, name) != shape[name]:
            raise UserError(
                f"{option(name)} {getattr(mcfg, name)!r} differs from the base's {shape[name]!r}; a run started "
                f"with --init-from keeps the base's {', '.join(option(n) for n in FROM_BASE)}, so drop the option"
            )
    defaults = {name: value for name, value in FINE_TUNE.items() if name not in given}
    tcfg, mcfg = training_configs({**shape, **defaults}, (tcfg, mcfg))
    return FineTuneStart(tcfg, mcfg, unset - shape.keys() - defaults.keys(), shape, defaults)


def corpus_for(
    base: Base, source: CorpusSource, reading: Reading, progress: ProgressFn | None
) -> tuple[TokenizedCorpus, VocabMerge]:
    """The new corpus in the base's vocabulary grown by its own (as ``reading`` would build it for
    a run from scratch), and what the merge kept and added."""
    own = load_corpus(source, reading, progress).vocab
    known = base.checkpoint.vocab
    corpus = load_in_vocab(source, reading, known.merged(own), progress)
    vocab, sources = corpus.vocab, corpus.vocab.sources_in(known)
    counts = token_counts(corpus.tokens, len(vocab))
    chars = len(vocab.chars)
    added = [i for i in range(chars) if len(sources[i]) != 1]  # no token of the base wrote it alone
    new_bytes = [i for i in range(chars, len(vocab)) if not sources[i]]
    kept = sum(1 for i in range(chars) if len(sources[i]) == 1 and counts[i])
    unused = sum(1 for c in known.chars if not counts[vocab.index[c]])
    starts = vocab.char_starts()
    written = counts[added].sum() + (counts[new_bytes] * starts[new_bytes]).sum()
    share = float(written) / max(corpus.stats.chars, 1)
    return corpus, VocabMerge(kept, unused, len(added), share, len(new_bytes))


def token_counts(tokens: np.ndarray, size: int) -> np.ndarray:
    """How often each id occurs, a block at a time (the tokens may be a large memory map)."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(tokens), COUNT_BLOCK):
        counts += np.bincount(tokens[start : start + COUNT_BLOCK], minlength=size)
    return counts


def merged_weights(base: Checkpoint, vocab: CharVocab) -> dict[str, torch.Tensor]:
    """The base's weights for a model over ``vocab`` (the base's grown by ``CharVocab.merged``):
    the rows of every token the base had, bitwise, and new rows as the module's docstring says."""
    state = dict(base.model)
    sources = vocab.sources_in(base.vocab)
    embed, weight, bias = (state[k] for k in ("embed.weight", "head.weight", "head.bias"))
    new_embed = embed.new_empty((len(vocab), embed.shape[1]))
    new_weight, new_bias = weight.new_empty((len(vocab), weight.shape[1])), bias.new_empty(len(vocab))
    own = len(base.vocab.chars)  # the base's character rows (its byte tokens follow)
    fresh = [i for i, s in enumerate(sources) if not s]
    leads: dict[int, int] = {}  # first byte's base id -> new characters that begin with it
    for s in sources:
        if len(s) > 1:
            leads[s[0]] = leads.get(s[0], 0) + 1
    for i, s in enumerate(sources):
        if len(s) == 1:  # a byte that new characters begin with keeps its share of what it stood for
            new_embed[i], new_weight[i] = embed[s[0]], weight[s[0]]
            new_bias[i] = bias[s[0]] - math.log(leads[s[0]] + 1) if s[0] in leads else bias[s[0]]
        elif s:
            new_embed[i] = embed[list(s)].mean(0)
            new_weight[i], new_bias[i] = weight[s[0]], bias[s[0]] - math.log(leads[s[0]] + 1)
        else:
            new_embed[i], new_weight[i] = embed[:own].mean(0), weight[:own].mean(0)
            new_bias[i] = bias[:own].min() - math.log(len(fresh))
    state.update({"embed.weight": new_embed, "head.weight": new_weight, "head.bias": new_bias})
    return state


def load_base(model: torch.nn.Module, base: Checkpoint, vocab: CharVocab) -> None:
    """Set ``model`` (built over ``vocab`` with the base's shape) to the base's merged weights."""
    weights, own = merged_weights(base, vocab), model.state_dict()
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
