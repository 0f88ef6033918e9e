"""The one-file page: a model that generates in a browser, offline (``charlstm export CKPT page.html``).

Everything is inside the HTML file: the page of the playground (``charlstm/web``: page.html,
page.js), the model's own runtime (``local.js``), its matrix product in WebAssembly (``step.wasm``,
assembled from ``step.wat``) and the weights, base64 in an inert script element. The page fetches
nothing, so it works opened from ``file://``, from any static host and on a phone.

The weights are the sampling step's (``sampling/stepper.py``: ``rounded_for`` then ``arranged``), so
the page computes what ``charlstm sample`` computes. Laid out for the WebAssembly step, which takes
four rows and eight (bf16) or four (fp32) columns at a time, and gates four units at a time: each
gate's block of H rows (and columns of the table, entries of the biases and peepholes) is padded
with zeros to a multiple of 8 units, Hp, and so are the columns over h; a deeper layer's matrix
reads [x | h] with each half padded. A padded unit reads zeros and keeps a zero state. With
``bf16`` the matrices the step reads travel, and stay in the page's memory, as bfloat16 (layer 0's
table, the biases, peepholes and the start state stay float32, as the step keeps them).
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from charlstm import web
from charlstm.choices import Precision
from charlstm.config.use import MAX_WINDOW, PENALTY_LIMIT
from charlstm.sampling.stepper import arranged, rounded_for
from charlstm.store.card import model_card
from charlstm.store.checkpoint import Checkpoint
from charlstm.validate import BIAS_LIMIT

ALIGN = 8  # the WebAssembly step reads eight bf16 columns at a time, and gates four units


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Blob:
    """Arrays laid end to end (each at a multiple of 4 bytes), and where each lies."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray, dtype: str) -> dict[str, Any]:
        if dtype == "bf16":  # the values are bf16 already (rounded_for): this keeps their top halves
            data = torch.from_numpy(np.ascontiguousarray(array, np.float32)).bfloat16().view(torch.int16).numpy()
        else:
            data = np.ascontiguousarray(array, np.float32)
        raw = data.astype(data.dtype.newbyteorder("<")).tobytes()
        entry = {"dtype": dtype, "shape": list(array.shape), "size": int(array.size), "offset": self.size}
        raw += b"\0" * (-len(raw) % 4)
        self.parts.append(raw)
        self.size += len(raw)
        return entry


def _blocks(m: np.ndarray, hidden: int, axis: int) -> np.ndarray:
    """``m`` with each block of ``hidden`` entries along ``axis`` (a gate's, or a layer's) padded to up(hidden)."""
    pad = [(0, 0)] * m.ndim
    pad[axis] = (0, _up(hidden) - hidden)
    parts = np.split(m, m.shape[axis] // hidden, axis=axis)
    return np.concatenate([np.pad(part, pad) for part in parts], axis=axis)


def _padded_rows(m: np.ndarray) -> np.ndarray:
    return np.pad(m, [(0, _up(m.shape[0]) - m.shape[0])] + [(0, 0)] * (m.ndim - 1))


def page_html(checkpoint: Checkpoint, precision: Precision, name: str) -> str:
    """The page of ``checkpoint``'s model, named ``name``, its matrices in ``precision``."""
    cfg, vocab = checkpoint.model_config, checkpoint.vocab
    weights = arranged(rounded_for(checkpoint.build_model(), precision.value))
    hidden, layers, hp = cfg.hidden, cfg.layers, _up(cfg.hidden)
    kind, blob = ("bf16" if precision == Precision.BF16 else "f32"), _Blob()
    gates = lambda m: _blocks(m, hidden, 0)  # noqa: E731 - rows: four blocks of H
    over_h = lambda m: _blocks(m, hidden, 1)  # noqa: E731 - columns: one block of H, or [x | h]
    tensors: dict[str, Any] = {
        "table": blob.add(_blocks(weights.table, hidden, 1), "f32"),  # (V, 4Hp)
        "w0": blob.add(over_h(gates(weights.mats[0])), kind),  # (4Hp, Hp)
        "deeper": [blob.add(over_h(gates(m)), kind) for m in weights.mats[1:-1]],  # (4Hp, 2Hp) each
        "head": blob.add(_padded_rows(over_h(weights.mats[-1])), kind),  # (Vp, Hp)
        "biases": [blob.add(gates(b), "f32") for b in weights.biases],  # (4Hp,) each
        "peep": blob.add(_blocks(weights.peep, hidden, 2), "f32"),  # (L, 3, Hp)
        "head_bias": blob.add(weights.head_bias, "f32"),  # (V,)
    }
    warm = checkpoint.warm_state()  # the state sampling starts from; (layers, 1, H) each
    for key, state in zip(("warm_h", "warm_c"), warm or (), strict=False):
        tensors[key] = blob.add(_blocks(state[:, 0].float().numpy(), hidden, 1), "f32")  # (L, Hp)
    step = {"cell": cfg.cell, "layers": layers, "hidden": hidden, "hidden_padded": hp, "vocab": cfg.vocab_size,
            "vocab_padded": _up(cfg.vocab_size), "tensors": tensors}  # fmt: skip
    card = {k: v for k, v in asdict(model_card(name, checkpoint, precision.value)).items() if k != "created"}
    facts = {**card, "step_trained": checkpoint.progress.step}
    limits = {"window": MAX_WINDOW, "bias": BIAS_LIMIT, "penalty": PENALTY_LIMIT}  # the controls' ranges
    reading = {"chars": list(vocab.chars), "byte_values": list(vocab.byte_values), "limits": limits, "step": step}
    model = {**facts, **reading}
    blocks = {
        "charlstm-step": base64.b64encode(web.read_bytes("step.wasm")).decode("ascii"),
        "charlstm-weights": base64.b64encode(b"".join(blob.parts)).decode("ascii"),
    }
    return web.page(f"charlstm: {name}", model, "local.js", blocks)
