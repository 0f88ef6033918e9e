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

Before the first step the merged model reads some of the new text (``familiarity``): a
text near the base's keeps the fine-tuning defaults; on one the base reads hardly better than
a uniform guess, its knowledge is little help and the run must learn fast, so the options
declared ``far_text`` (the learning rate, the weight drop) take what a run from scratch would:
the preset's value for the budget (``release``, then ``fit``); a text between takes a blend.

The run records its base (``lineage``): the file's sha256, its corpus, its steps, and its own base.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.config import ModelConfig, TrainConfig, train_options, training_configs
from charlstm.data.corpus import Reading, TokenizedCorpus, load_corpus, load_in_vocab
from charlstm.data.sources import CorpusSource, ProgressFn
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.options import option
from charlstm.store.checkpoint import Checkpoint, Lineage, find_checkpoint, load_checkpoint
from charlstm.training.events import Familiarity, VocabMerge

FROM_BASE = tuple(d.name for d in train_options() if d.option.from_base)  # the model's shape
FINE_TUNE = {d.name: d.fine_tuned for d in train_options() if d.fine_tuned is not None}  # where they differ
FAR = tuple(d.name for d in train_options() if d.option.far_text)  # as from scratch on a far text
READ_TOKENS, READ_STREAMS = 20_000, 16  # of the training split the base reads first, in stretches
LOGITS_BUDGET = 1 << 24  # logits held at once while it reads (64 MB)
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
    released: dict[str, Any] = field(default_factory=dict)  # those left to the preset for a far text
    sizable: frozenset[str] = frozenset()  # the options the caller left to charlstm


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
    return FineTuneStart(tcfg, mcfg, unset - shape.keys() - defaults.keys(), shape, defaults, sizable=unset)


def familiarity(base: Checkpoint, vocab: CharVocab, tokens: np.ndarray) -> Familiarity:
    """How well ``base``, grown to ``vocab``, reads ``READ_TOKENS`` of ``tokens`` (the new text's
    training split, never its validation split): ``READ_STREAMS`` stretches spread evenly over
    it (a folder's first file alone may be a licence), each read from a zero state, in float32
    and with nothing dropped. The guess is uniform over the tokens those stretches hold, so the
    vocabulary's unused places (its byte tokens) do not move it."""
    count = min(READ_TOKENS, len(tokens) - 1)
    if count < 1:
        return Familiarity(0.0, 0.0)
    streams = max(1, min(READ_STREAMS, count // 64))
    length = count // streams
    starts = np.linspace(0, len(tokens) - length - 1, streams).astype(np.int64)
    rows = torch.from_numpy(np.stack([np.asarray(tokens[i : i + length + 1], dtype=np.int64) for i in starts]))
    model = load_base(CharLSTM(replace(base.model_config, vocab_size=len(vocab))), base, vocab)
    group = max(1, LOGITS_BUDGET // (length * len(vocab)))  # streams read at once
    nll = []
    with torch.no_grad():
        for first in range(0, streams, group):
            part = rows[first : first + group]
            logits, _ = model.eval()(part[:, :-1])
            nll.append(
                F.cross_entropy(logits.reshape(-1, len(vocab)).float(), part[:, 1:].reshape(-1), reduction="none")
            )
    targets = rows[:, 1:].reshape(-1)
    guess = math.log(len(torch.unique(targets)))
    known = torch.tensor([len(s) == 1 for s in vocab.sources_in(base.vocab)])
    losses = torch.where(known[targets], torch.cat(nll), torch.tensor(guess))
    return Familiarity(float(losses.mean()), guess)


def release(tcfg: TrainConfig, mcfg: ModelConfig, begun: FineTuneStart, read: Familiarity) -> FineTuneStart:
    """Before sizing: for a text not near the base's, the ``FAR`` options' fine-tuning defaults
    are released (back to their own defaults, and left for the preset to size as in a run from
    scratch); ``fit`` moves them back toward the fine-tuning defaults after."""
    far = set(FAR) & begun.sizable if read.far else set()
    released = {name: v for name, v in begun.fine_tuned.items() if name in far}
    own = {d.name: d.default for d in train_options() if d.name in released}
    tcfg, mcfg = training_configs(own, (tcfg, mcfg))
    kept = {name: v for name, v in begun.fine_tuned.items() if name not in released}
    return replace(begun, tcfg=tcfg, mcfg=mcfg, unset=begun.unset | released.keys(), fine_tuned=kept, released=released)


def fit(
    tcfg: TrainConfig, mcfg: ModelConfig, released: dict[str, Any], read: Familiarity
) -> tuple[TrainConfig, ModelConfig, dict[str, Any]]:
    """After sizing: each released option at the value a run from scratch took, less the way back
    to its fine-tuning default that the text is near the base's (none for a far text); also the
    values it ends at."""
    moved = {}
    for name, near in released.items():
        scratch = getattr(tcfg, name) if hasattr(tcfg, name) else getattr(mcfg, name)
        moved[name] = float(f"{near + (scratch - near) * read.far:.3g}")
    tcfg, mcfg = training_configs(moved, (tcfg, mcfg))
    return tcfg, mcfg, moved


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


def load_base(model: CharLSTM, base: Checkpoint, vocab: CharVocab) -> CharLSTM:
    """``model`` (built over ``vocab`` with the base's shape) set to the base's merged weights."""
    weights, own = merged_weights(base, vocab), model.state_dict()
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    return model
