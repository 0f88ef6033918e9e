"""The ONNX export: a checkpoint as one stateful step graph for onnxruntime (and any other runtime
of the standard ops), checked against the torch model before it is handed over.

The graph reads ``tokens`` (batch, time) int64 and the carried state ``h`` (and ``c`` for the
LSTMs), each (layers, batch, hidden), and returns ``logits`` (batch, time, vocab) with ``h_out``
(and ``c_out``): a caller feeds the outputs back in as the next call's state, so a prompt can be
read in one call and text drawn a step at a time. Batch and time are dynamic::

    tokens -> Transpose (time-major) -> Gather (embedding) -> per layer: LSTM or GRU
           -> Squeeze -> Transpose (batch-major) -> MatMul + Add (head) -> logits

Each layer is ONNX's own ``LSTM`` op (with its peephole input ``P`` for the peephole cell, whose
equations are exactly ``peephole.py``'s) or ``GRU`` op (``linear_before_reset=1``, torch's GRU),
time-major because onnxruntime's CPU kernels do not take ``layout=1``. The graph is written with
``onnx.helper`` rather than ``torch.onnx.export``: the exporter would trace the peephole cell's
Python loop into one copy of the step per token of the example input, where the recurrent op
keeps the time axis free. Only the gate order differs from torch's and is permuted here.

Configs, vocabulary (with its byte tokens), progress and the warm start state travel as JSON in
``metadata_props`` (keys ``charlstm.*``), so a reader needs onnxruntime and numpy alone
(``docs/examples/sample_onnx.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from charlstm.store.checkpoint import Checkpoint

OPSET = 17
IR_VERSION = 8  # the IR of opset 17 (onnx 1.12): runtimes older than this onnx package still read the file
FORMAT_VERSION = 1  # of the metadata below
TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted, in logits and in state (relative past 1)
PIECES = (1, 7, 1, 31, 2, 64, 3, 17)  # lengths of the calls of the check, in turn: the state is carried between
STATE_NAMES = {"lstm": ("h", "c"), "peephole": ("h", "c"), "gru": ("h",)}
LSTM_GATES = (0, 3, 1, 2)  # ONNX's i, o, f, c as torch's chunks (i, f, g, o)
GRU_GATES = (1, 0, 2)  # ONNX's z, r, h as torch's chunks (r, z, n)
PEEP_GATES = (0, 2, 1)  # ONNX's P (i, o, f) as peep_l{k}'s rows (p_i, p_f, p_o)


@dataclass(frozen=True)
class OnnxCheck:
    """How closely onnxruntime ran the written file next to the torch model."""

    opset: int
    steps: int  # tokens run, per stream
    max_logit_diff: float  # largest |logit_ort - logit_torch| over all steps
    max_state_diff: float  # largest difference in the state after each call, relative where |state| > 1


def write_onnx(checkpoint: Checkpoint, path: Path, steps: int = 200) -> OnnxCheck:
    """Write ``checkpoint``'s model to ``path`` as an ONNX graph, then check it: the ONNX checker,
    and onnxruntime against the torch model over ``steps`` tokens of two streams. Raises
    ``RuntimeError`` when they differ by :data:`TOLERANCE` or more (a fault of the export)."""
    model = build_graph(checkpoint)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return check_parity(checkpoint, path, steps)


def build_graph(checkpoint: Checkpoint) -> onnx.ModelProto:
    """The model of ``checkpoint`` as an ONNX model, metadata included (see the module docstring)."""
    config, weights = checkpoint.model_config, _fp32(checkpoint.model)
    cell, layers, hidden, vocab = config.cell, config.layers, config.hidden, config.vocab_size
    states = STATE_NAMES[cell]
    state_shape = [layers, "batch", hidden]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])]
    inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape) for s in states]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", vocab])]
    outputs += [helper.make_tensor_value_info(f"{s}_out", TensorProto.FLOAT, state_shape) for s in states]
    init = [
        numpy_helper.from_array(weights["embed.weight"], "embed"),
        numpy_helper.from_array(np.ascontiguousarray(weights["head.weight"].T), "head_w"),  # (H, V)
        numpy_helper.from_array(weights["head.bias"], "head_b"),
        _ints([1], "axis1"),
    ]
    nodes = [
        helper.make_node("Transpose", ["tokens"], ["tokens_tm"], perm=[1, 0]),  # (T, B)
        helper.make_node("Gather", ["embed", "tokens_tm"], ["x0"], axis=0),  # (T, B, E)
    ]
    finals: dict[str, list[str]] = {s: [] for s in states}
    x = "x0"
    for k in range(layers):
        init += _layer_weights(cell, weights, k, hidden)
        for s in states:  # this layer's slice of the carried state, (1, B, H)
            init += [_ints([k], f"{s}{k}_lo"), _ints([k + 1], f"{s}{k}_hi")]
            nodes.append(helper.make_node("Slice", [s, f"{s}{k}_lo", f"{s}{k}_hi"], [f"{s}{k}_in"]))
            finals[s].append(f"{s}{k}_out")
        ys = [f"y{k}"] + [f"{s}{k}_out" for s in states]  # Y (T, 1, B, H), Y_h and Y_c (1, B, H)
        args = [x, f"W{k}", f"R{k}", f"B{k}", "", *(f"{s}{k}_in" for s in states)]  # "": no sequence_lens
        if cell == "gru":
            nodes.append(helper.make_node("GRU", args, ys, hidden_size=hidden, linear_before_reset=1))
        else:
            peep = [f"P{k}"] if cell == "peephole" else []
            nodes.append(helper.make_node("LSTM", args + peep, ys, hidden_size=hidden))
        nodes.append(helper.make_node("Squeeze", [f"y{k}", "axis1"], [f"x{k + 1}"]))  # (T, 1, B, H) -> (T, B, H)
        x = f"x{k + 1}"
    nodes += [helper.make_node("Concat", finals[s], [f"{s}_out"], axis=0) for s in states]
    nodes += [
        helper.make_node("Transpose", [x], ["out_bm"], perm=[1, 0, 2]),  # (B, T, H)
        helper.make_node("MatMul", ["out_bm", "head_w"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, f"charlstm_{cell}", inputs, outputs, init)
    doc = (
        f"charlstm {cell} model, {layers} x {hidden}, {vocab} tokens: logits of the next token after each of "
        f"`tokens`, and the state after the last; feed h_out{' and c_out' if cell != 'gru' else ''} back as the "
        f"next call's state (metadata charlstm.* hold the vocabulary and warm start state)"
    )
    model = helper.make_model(
        graph,
        producer_name="charlstm",
        doc_string=doc,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, metadata(checkpoint))
    return model


def _ints(values: list[int], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _fp32(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in state_dict.items()}


def _gates(w: np.ndarray, order: tuple[int, ...], hidden: int) -> np.ndarray:
    """Rows of ``w`` (gates stacked along axis 0, ``hidden`` rows each) in ONNX's gate order."""
    return np.concatenate([w[g * hidden : (g + 1) * hidden] for g in order])


def _layer_weights(cell: str, weights: dict[str, np.ndarray], k: int, hidden: int) -> list[onnx.TensorProto]:
    """Layer ``k``'s ``W`` (1, G*H, in), ``R`` (1, G*H, H), ``B`` (1, 2*G*H) and, for the
    peephole cell, ``P`` (1, 3H), with the G gates in ONNX's order."""
    order = GRU_GATES if cell == "gru" else LSTM_GATES
    get = lambda name: weights[f"{cell}.{name}_l{k}"]  # noqa: E731 - the recurrent module is named after its cell
    tensors = {
        "W": _gates(get("weight_ih"), order, hidden)[None],
        "R": _gates(get("weight_hh"), order, hidden)[None],
        "B": np.concatenate([_gates(get("bias_ih"), order, hidden), _gates(get("bias_hh"), order, hidden)])[None],
    }
    if cell == "peephole":
        tensors["P"] = _gates(get("peep"), PEEP_GATES, 1).reshape(1, 3 * hidden)
    return [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), f"{n}{k}") for n, v in tensors.items()]


def metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """The ``metadata_props`` of the file, each a JSON string: whatever a reader needs besides the graph."""
    vocab, saved, progress = checkpoint.vocab, checkpoint.to_dict(), checkpoint.progress
    states = STATE_NAMES[checkpoint.model_config.cell]
    warm = checkpoint.warm_state()
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no infinity
    inputs = {
        "inputs": {
            "tokens": "int64 (batch, time): token ids",
            **{s: "float32 (layers, batch, hidden): state before the first token" for s in states},
        },
        "outputs": {
            "logits": "float32 (batch, time, vocab): scores of the token after each input token",
            **{f"{s}_out": f"float32 (layers, batch, hidden): {s} after the last token" for s in states},
        },
    }
    values = {
        "vocab": {
            "chars": vocab.to_string(),
            "byte_fallback": vocab.byte_fallback,
            "tokens": list(vocab.token_names()),
            "byte_values": list(vocab.byte_values),
        },
        "model_config": saved["model_config"],
        "train_config": saved["train_config"],
        "progress": {"step": progress.step, "best_val_loss": finite(progress.best_val_loss)},
        "warm_state": {s: t[:, 0].tolist() for s, t in zip(states, warm, strict=True)} if warm else None,
        "inputs": inputs,
        "opset": OPSET,
        "format_version": FORMAT_VERSION,
    }
    return {f"charlstm.{k}": json.dumps(v, ensure_ascii=False) for k, v in values.items()}


def start_state(checkpoint: Checkpoint, batch: int) -> tuple[np.ndarray, ...]:
    """The warm state (zeros without one) for ``batch`` streams, each (layers, batch, hidden) fp32."""
    config = checkpoint.model_config
    warm = checkpoint.warm_state()
    if warm is None:
        zeros = np.zeros((config.layers, batch, config.hidden), np.float32)
        return tuple(zeros for _ in STATE_NAMES[config.cell])
    return tuple(np.repeat(t.float().numpy(), batch, axis=1) for t in warm)


@torch.no_grad()
def check_parity(checkpoint: Checkpoint, path: Path, steps: int) -> OnnxCheck:
    """Run the file at ``path`` with onnxruntime and the model with torch (fp32) over ``steps``
    tokens of two streams, in calls of uneven lengths (:data:`PIECES`) with the state carried."""
    states = STATE_NAMES[checkpoint.model_config.cell]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a check has no use for its notices
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = checkpoint.build_model().float().eval()
    tokens = np.random.default_rng(0).integers(0, len(checkpoint.vocab), (2, steps), dtype=np.int64)
    ort_state = start_state(checkpoint, 2)
    torch_state = tuple(torch.from_numpy(t.copy()) for t in ort_state)
    logit_diff = state_diff = 0.0
    begin, piece = 0, 0
    while begin < steps:
        end = min(steps, begin + PIECES[piece % len(PIECES)])
        chunk = tokens[:, begin:end]
        logits, *ort_state = session.run(None, {"tokens": chunk, **dict(zip(states, ort_state, strict=True))})
        expected, torch_state = model(torch.from_numpy(chunk), torch_state)
        logit_diff = max(logit_diff, float(np.abs(logits - expected.numpy()).max()))
        for got, want in zip(ort_state, torch_state, strict=True):
            want = want.numpy()  # c grows to hundreds, where fp32's own spacing is 3e-5: relative past 1
            state_diff = max(state_diff, float((np.abs(got - want) / np.maximum(1.0, np.abs(want))).max()))
        begin, piece = end, piece + 1
    if not logit_diff < TOLERANCE or not state_diff < TOLERANCE:  # a NaN fails too
        raise RuntimeError(
            f"the ONNX graph disagrees with the torch model by up to {logit_diff:.3g} in logits and "
            f"{state_diff:.3g} in state over {steps} steps (tolerance {TOLERANCE:g}): an export fault"
        )
    return OnnxCheck(OPSET, steps, logit_diff, state_diff)
