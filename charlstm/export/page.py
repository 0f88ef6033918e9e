"""The one-file page: a model that generates in a browser, offline (``charlstm export CKPT page.html``).

Everything is inside the HTML file: the page of the playground (``charlstm/web``: page.html,
page.js), the model's own runtime (``local.js``), its matrix product in WebAssembly (``step.wasm``,
assembled from ``step.wat``) and the weights, base64 in an inert script element. The page fetches
nothing, so it works opened from ``file://``, from any static host and on a phone.

The weights are the sampling step's (``sampling/stepper.py``: ``rounded_for`` then ``arranged``), so
the page computes what ``charlstm sample`` computes. Laid out for the WebAssembly product, which
takes four rows and four columns at a time: rows and columns are padded with zeros to multiples of
4, and each deeper layer's matrix reads [x | h] with each half padded. With ``bf16`` the matrices
the step reads travel as bfloat16 (the table of layer 0, the biases, peepholes and the start state
stay float32, as the step keeps them), and the page widens them to float32 as it loads.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from charlstm import web
from charlstm.choices import Precision
from charlstm.sampling.stepper import arranged, rounded_for
from charlstm.store.card import model_card
from charlstm.store.checkpoint import Checkpoint

ALIGN = 4  # the WebAssembly product's rows and columns come in fours


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


def _padded(m: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), np.float32)
    out[: m.shape[0], : m.shape[1]] = m
    return out


def _over_xh(m: np.ndarray, hidden: int) -> np.ndarray:
    """A deeper layer's (4H, 2H) matrix over [x | h] with each half padded: (4H, 2 * up(H))."""
    hp = _up(hidden)
    out = np.zeros((m.shape[0], 2 * hp), np.float32)
    out[:, :hidden], out[:, hp : hp + hidden] = m[:, :hidden], m[:, hidden:]
    return out


def page_html(checkpoint: Checkpoint, precision: Precision, name: str) -> str:
    """The page of ``checkpoint``'s model, named ``name``, its matrices in ``precision``."""
    cfg, vocab = checkpoint.model_config, checkpoint.vocab
    weights = arranged(rounded_for(checkpoint.build_model().eval(), precision.value))
    hidden, layers, hp = cfg.hidden, cfg.layers, _up(cfg.hidden)
    kind, blob = ("bf16" if precision == Precision.BF16 else "f32"), _Blob()
    tensors: dict[str, Any] = {
        "table": blob.add(weights.table, "f32"),  # (V, 4H)
        "w0": blob.add(_padded(weights.mats[0], 4 * hidden, hp), kind),  # (4H, Hp)
        "deeper": [blob.add(_over_xh(m, hidden), kind) for m in weights.mats[1:-1]],  # (4H, 2Hp) each
        "head": blob.add(_padded(weights.mats[-1], _up(cfg.vocab_size), hp), kind),  # (Vp, Hp)
        "biases": [blob.add(b, "f32") for b in weights.biases],  # (4H,) each
        "peep": blob.add(weights.peep, "f32"),  # (L, 3, H)
        "head_bias": blob.add(weights.head_bias, "f32"),  # (V,)
    }
    warm = checkpoint.warm_state()  # the state sampling starts from; (layers, 1, H) each
    for key, state in zip(("warm_h", "warm_c"), warm or (), strict=False):
        tensors[key] = blob.add(state[:, 0].float().numpy(), "f32")  # (L, H)
    step = {"cell": cfg.cell, "layers": layers, "hidden": hidden, "hidden_padded": hp, "vocab": cfg.vocab_size,
            "vocab_padded": _up(cfg.vocab_size), "tensors": tensors}  # fmt: skip
    card = {k: v for k, v in asdict(model_card(name, checkpoint, precision.value)).items() if k != "created"}
    facts = {**card, "step_trained": checkpoint.progress.step}
    model = {**facts, "chars": list(vocab.chars), "byte_values": list(vocab.byte_values), "step": step}
    blocks = {
        "charlstm-step": base64.b64encode(web.read_bytes("step.wasm")).decode("ascii"),
        "charlstm-weights": base64.b64encode(b"".join(blob.parts)).decode("ascii"),
    }
    return web.page(f"charlstm: {name}", model, "local.js", blocks)
