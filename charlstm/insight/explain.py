"""What the cells of a trained model follow: read a text one token at a time, keep every cell's
value and the next-character distribution at each character, find for each of a few text
features the cell that follows it best, and write the page that shows them (``charlstm explain``).

A cell is one unit of one layer, numbered over the layers: with H units a layer, the second
layer's first unit is cell H (the page names layers from 1). Its value at a character is the one
it holds right after reading that character: tanh of the cell state, or the hidden output (a GRU
has only the latter).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlstm.config import ExplainConfig, ModelConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.files import atomic_path, output_file
from charlstm.insight import page
from charlstm.net.model import CharLSTM, State
from charlstm.sampling.stepper import Stepper
from charlstm.store.checkpoint import Checkpoint, load_checkpoint

TOP = 5  # likeliest next characters shown on hover


@dataclass
class Activations:
    """What the model did at each of the N characters of a text."""

    text: str  # the N characters
    values: np.ndarray  # (N, layers * H) float32, each cell's value after reading the character
    top_ids: np.ndarray  # (N, TOP) int, the likeliest next tokens, likeliest first
    top_probs: np.ndarray  # (N, TOP) float32, their probabilities
    next_loss: np.ndarray  # (N,) float32, nats on the actual next character (nan after the last)


@dataclass
class Found:
    """The cell that follows a feature best, and how well (Pearson r over the text)."""

    feature: str
    cell: int
    r: float


@dataclass
class ExplainReport:
    """What ``charlstm explain`` did: the page it wrote and what it found."""

    out: Path
    chars: int
    value: str  # "cell" or "hidden"
    found: list[Found]  # one per feature present in the text
    absent: list[str]  # features the text never shows (a constant: no correlation exists)
    cells: list[int]  # the cells the page shows, one block each
    page_bytes: int
    seconds: float  # reading the text, searching and writing the page


# --- text features: name -> (N,) float array over the characters of a text ---


def _line_position(text: str, codes: np.ndarray) -> np.ndarray:
    """Characters read since the last newline (0 at the newline itself)."""
    idx = np.arange(len(codes))
    last_newline = np.maximum.accumulate(np.where(codes == 10, idx, -1))
    return (idx - last_newline).astype(np.float64)


def _in_quotes(text: str, codes: np.ndarray) -> np.ndarray:
    """After an odd number of double quotes: the opening quote is inside, the closing one not."""
    return np.cumsum(codes == ord('"')) % 2 == 1


def _in_brackets(text: str, codes: np.ndarray) -> np.ndarray:
    """Inside (), [] or {} (any depth); a closing bracket is outside, as is one with no opener."""
    depth, inside = 0, np.zeros(len(text), dtype=bool)
    for i, c in enumerate(text):
        depth = depth + 1 if c in "([{" else max(depth - 1, 0) if c in ")]}" else depth
        inside[i] = depth > 0
    return inside


def _capitals_line(text: str, codes: np.ndarray) -> np.ndarray:
    """In a line whose letters (two or more) are all capitals, such as a speaker's name; the
    newline belongs to the line it ends."""
    line = np.concatenate([[0], np.cumsum(codes == 10)[:-1]])  # (N,) line number of each character
    letters = np.array([c.isalpha() for c in text])
    upper = np.array([c.isupper() for c in text])
    count, caps = np.bincount(line, letters), np.bincount(line, upper)
    return ((count >= 2) & (caps == count))[line]


def _word_start(text: str, codes: np.ndarray) -> np.ndarray:
    """A letter that follows a non-letter (or starts the text)."""
    letters = np.array([c.isalpha() for c in text])
    return letters & ~np.concatenate([[False], letters[:-1]])


def _after_newline(text: str, codes: np.ndarray) -> np.ndarray:
    """The first character of a line."""
    return np.concatenate([[False], codes[:-1] == 10])


FEATURES: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {
    "position in the line": _line_position,
    "inside quotes": _in_quotes,
    "inside brackets": _in_brackets,
    "line of capitals": _capitals_line,
    "start of a word": _word_start,
    "after a newline": _after_newline,
}


def text_features(text: str) -> dict[str, np.ndarray]:
    """Every feature of ``FEATURES`` over ``text``, each (N,) float64."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
    return {name: fn(text, codes).astype(np.float64) for name, fn in FEATURES.items()}


# --- the search ---


def correlations(values: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pearson r of every feature with every cell: values (N, D), features (N, K) -> (K, D).

    A constant cell correlates with nothing (0); a constant feature gives a row of nan.
    """
    v = values - values.mean(axis=0, dtype=np.float64)  # (N, D)
    f = features - features.mean(axis=0)  # (N, K)
    v_norm, f_norm = np.linalg.norm(v, axis=0), np.linalg.norm(f, axis=0)  # (D,), (K,)
    r = (f.T @ v) / np.where(v_norm > 0, v_norm, np.inf)[None, :]  # (K, D)
    with np.errstate(invalid="ignore", divide="ignore"):
        return r / f_norm[:, None]


def best_cells(values: np.ndarray, features: dict[str, np.ndarray]) -> tuple[list[Found], list[str]]:
    """For each feature the cell of largest |r|, and the features absent from the text."""
    names = list(features)
    r = correlations(values, np.stack([features[n] for n in names], axis=1))  # (K, D)
    found, absent = [], []
    for name, row in zip(names, r, strict=True):
        if np.isnan(row).all():
            absent.append(name)
            continue
        cell = int(np.nanargmax(np.abs(row)))
        found.append(Found(name, cell, float(row[cell])))
    return found, absent


def cells_to_show(found: list[Found], values: np.ndarray, count: int) -> list[int]:
    """The features' cells in feature order (each once), then the cells whose values vary most,
    ``count`` in all."""
    cells = list(dict.fromkeys(f.cell for f in found))[:count]
    for cell in np.argsort(-values.std(axis=0), kind="stable"):
        if len(cells) >= count:
            break
        if int(cell) not in cells:
            cells.append(int(cell))
    return cells


# --- reading a text through a model ---


def read_text(path: str | Path, encoding: str, chars: int) -> str:
    """The first ``chars`` characters of the file at ``path``."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise UserError(f"text {str(p)!r} {what}, expected a text file (--text)")
    try:
        with open(p, encoding=encoding, newline="") as f:
            text = f.read(chars)
    except (UnicodeDecodeError, LookupError) as e:
        raise UserError(f"text {str(p)!r} cannot be read as {encoding} ({e}); pass its --encoding") from None
    except OSError as e:
        raise UserError(f"text {str(p)!r} cannot be read ({e.strerror or e})") from None
    if len(text) < 2:
        raise UserError(f"text {str(p)!r} has {len(text)} characters, expected at least 2")
    return text


def char_tokens(vocab: CharVocab, text: str, subject: str) -> list[list[int]]:
    """The token ids of each character (one, or its UTF-8 bytes as byte tokens)."""
    vocab.check_known(text, subject, f"expected text made of the model's {len(vocab)} characters")
    return [vocab.encode(c) for c in text]


@torch.no_grad()
def read_through(model: CharLSTM, pieces: list[list[int]], text: str, value: str, state: State | None) -> Activations:
    """Step the model one token at a time through the characters' tokens ``pieces``, carrying the
    state from ``state`` (None: zeros); keep what it holds after each character's last token.

    The fp32 compiled step (``stepper.py``, equal to the forward pass within 1e-5) takes
    microseconds a token, where a forward call per token pays torch's set-up every time. One
    thread bounds the worst case: for 10,000 characters on the 2-core machine two threads took
    1.4 s against 2.8 s for one when idle, but 7 to 23 times longer than one beside another busy
    process (each tiny step waits for both threads)."""
    tokens = np.array([t for piece in pieces for t in piece], dtype=np.int64)  # (M,)
    stepper = Stepper(model, threads=1)
    step_logits, s = stepper.prime(torch.from_numpy(tokens[None, :1]), state)
    layers, hidden = model.config.layers, model.config.hidden
    held = np.empty((len(tokens), layers * hidden), np.float32)  # (M, layers * H), layer by layer
    logits = np.empty((len(tokens), step_logits.shape[1]), np.float32)  # (M, V)
    logits[0] = step_logits[0]
    for t in range(len(tokens)):
        if t:
            logits[t] = stepper.step(tokens[t], s)
        held[t] = (s.xh[:, 0, hidden : 2 * hidden] if value == "hidden" else np.tanh(s.c[:, 0])).reshape(-1)
    logp = torch.log_softmax(torch.from_numpy(logits), dim=1).numpy()  # (M, V)
    ends = np.cumsum([len(p) for p in pieces]) - 1  # (N,) index of each character's last token
    top = np.argsort(-logp[ends], axis=1, kind="stable")[:, :TOP]  # (N, TOP)
    return Activations(
        text=text,
        values=held[ends],
        top_ids=top,
        top_probs=np.exp(np.take_along_axis(logp[ends], top, axis=1)).astype(np.float32),
        next_loss=_next_losses(logp, tokens, ends),
    )


def _next_losses(logp: np.ndarray, tokens: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Nats on each character's successor, the sum over its tokens: logp (M, V), tokens (M,),
    ends (N,) -> (N,), nan after the last character."""
    token_loss = np.concatenate([[0.0], -logp[np.arange(len(tokens) - 1), tokens[1:]]])  # (M,) given the one before
    per_char = np.diff(np.concatenate([[0.0], np.cumsum(token_loss)[ends]]))  # (N,); the first is unscored
    return np.concatenate([per_char[1:], [np.nan]]).astype(np.float32)


def resolve_value(value: str | None, cell: str) -> str:
    """The value to show: as asked, else tanh of the cell state, or the hidden output for a GRU."""
    if value == "cell" and cell == "gru":
        raise UserError("--value 'cell' is not valid for a GRU, which has no cell state; expected --value hidden")
    return value or ("hidden" if cell == "gru" else "cell")


# --- the command ---


def explain_checkpoint(checkpoint: str | Path, config: ExplainConfig) -> ExplainReport:
    """Read ``config.text`` through a checkpoint's model, find the feature cells, write the page."""
    start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    out = _page_path(config.out, config.overwrite)
    mcfg = ckpt.model_config
    value = resolve_value(config.value, mcfg.cell)
    _check_cell_ids(config.cell_ids, mcfg.layers * mcfg.hidden)
    text = read_text(config.text, config.encoding, config.chars)
    pieces = char_tokens(ckpt.vocab, text, f"text {config.text!r}")
    acts = read_through(ckpt.build_model(), pieces, text, value, ckpt.warm_state())
    features = text_features(text)
    found, absent = best_cells(acts.values, features)
    cells = list(config.cell_ids or cells_to_show(found, acts.values, config.blocks))
    title = f"{ckpt.path} on {config.text}, {value} values"
    data = _page_data(title, acts, features, found, absent, cells, ckpt)
    _write(out, page.build(data))
    size, seconds = out.stat().st_size, time.perf_counter() - start
    return ExplainReport(out, len(text), value, found, absent, cells, size, seconds)


def _page_data(
    title: str,
    acts: Activations,
    features: dict[str, np.ndarray],
    found: list[Found],
    absent: list[str],
    cells: list[int],
    ckpt: Checkpoint,
) -> page.PageData:
    mcfg = ckpt.model_config
    blocks = _blocks(acts.values, features, found, cells, mcfg)
    labels = [token_label(ckpt.vocab, i) for i in range(len(ckpt.vocab))]
    table = [(f.feature, _cell_name(f.cell, mcfg), f.r) for f in found] + [(name, None, None) for name in absent]
    top_ids, top_probs, next_loss = acts.top_ids, acts.top_probs, acts.next_loss
    return page.PageData(title, acts.text, blocks, labels, top_ids, top_probs, next_loss, table)


def _check_cell_ids(cell_ids: tuple[int, ...] | None, cells: int) -> None:
    bad = [i for i in cell_ids or () if i >= cells]
    if bad:
        raise UserError(f"--cell-ids {bad[0]} is not valid, expected cell numbers from 0 to {cells - 1}")


def _page_path(given: str, overwrite: bool) -> Path:
    """Where the page goes, checked before the work (``files.output_file``)."""
    return output_file(given, overwrite, "--out", "the path of an .html file")


def _write(out: Path, html: str) -> None:
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(html.encode("utf-8"))
    except OSError as e:
        raise UserError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None


def _blocks(
    values: np.ndarray, features: dict[str, np.ndarray], found: list[Found], cells: list[int], mcfg: ModelConfig
) -> list[page.Block]:
    """One block per cell, titled with the features it follows best; a cell chosen by hand or for
    its spread with the feature it follows best."""
    r = correlations(values[:, cells], np.stack(list(features.values()), axis=1))  # (K, cells)
    r = np.where(np.isnan(r), 0.0, r)  # absent features match nothing
    blocks = []
    for j, cell in enumerate(cells):
        best = [(f.feature, f.r) for f in found if f.cell == cell]
        k = int(np.argmax(np.abs(r[:, j])))
        closest = [(list(features)[k], float(r[k, j]))]
        blocks.append(page.Block(_cell_name(cell, mcfg), best or closest, values[:, cell], found=bool(best)))
    return blocks


def _cell_name(cell: int, mcfg: ModelConfig) -> str:
    layer, unit = divmod(cell, mcfg.hidden)
    return f"cell {cell}" if mcfg.layers == 1 else f"cell {cell} (layer {layer + 1}, unit {unit})"


def token_label(vocab: CharVocab, token: int) -> str:
    """How a token shows in the page: visible marks for newline, space and tab, <XX> for a byte."""
    if token >= len(vocab.chars):
        return f"<{vocab.byte_values[token - len(vocab.chars)]:02X}>"
    return {"\n": "\u21b5", " ": "\u2423", "\t": "\u21e5", "\r": "\u240d"}.get(vocab.chars[token], vocab.chars[token])
