"""Training and sampling speed of charlstm beside plain PyTorch, measured in the same run.

For each shape it prints:
- training chars/s of charlstm's own step (``charlstm.training.step.train_step``: its precision,
  fused AdamW, clipping, and on CPU freed memory kept for the next step, as ``charlstm train``
  has it) and of a plain fp32 ``nn.LSTM`` loop with the same shapes (measured first, with the C
  library's defaults), and the ratio;
- the FLOP/s that charlstm's training reaches (6 x matmul parameters x chars/s) as a fraction of
  this machine's matrix-multiply peak in the same dtype, measured here with 2048^3 products;
- sampling chars/s at 1 and 64 streams, with weights in fp32 (exact) and in bf16 (what
  ``charlstm sample`` uses for a model trained in bf16), through ``Slots.draw`` as
  ``charlstm sample`` and the server run it (a compiled call per chunk of 256 characters: one
  stream with its products split between threads, many in tiles of streams shared out between
  threads); beside calling ``nn.LSTM`` once per character with softmax + multinomial, and the
  ratios.

    python benchmarks/speed.py                  # 2x256 and 2x512 (and 3x512 on a GPU)
    python benchmarks/speed.py --shapes 2x256 --seconds 5
    python benchmarks/speed.py --training-only --batch 64 --shapes 1x768 2x768 --dropout 0.2 --weight-drop 0.5
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.batches import StreamBatches
from charlstm.device import keep_freed_memory
from charlstm.net.model import CharLSTM
from charlstm.sampling.draw import PIECE_TOKENS, SamplingRule
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper
from charlstm.training.probe import choose_precision
from charlstm.training.step import Learner, make_optimizer, train_step

V, E, T = 65, 64, 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn: Callable[[], int], device: torch.device, seconds: float) -> float:
    """Units per second of ``fn`` (which returns the units it did), after a warm-up."""
    fn()
    fn()
    sync(device)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    sync(device)
    return done / (time.perf_counter() - t0)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return rate(lambda: (a @ b, 2 * n**3)[1], device, seconds)


def plain_training(h: int, layers: int, batch: int, device: torch.device, seconds: float) -> float:
    """The usual hand-written loop: fp32, batch_first nn.LSTM, Adam, no extras."""
    emb, lstm, head = nn.Embedding(V, E), nn.LSTM(E, h, layers, batch_first=True), nn.Linear(h, V)
    mods = nn.ModuleList([emb, lstm, head]).to(device)
    opt = torch.optim.Adam(mods.parameters(), lr=2e-3)
    x = torch.randint(0, V, (batch, T), device=device)
    y = torch.randint(0, V, (batch, T), device=device)
    state = None

    def step() -> int:
        nonlocal state
        out, state = lstm(emb(x), state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return batch * T

    return rate(step, device, seconds)


def charlstm_training(
    h: int, layers: int, batch: int, device: torch.device, seconds: float, **regularised: float
) -> tuple[float, str]:
    """``regularised``: ``dropout`` and ``weight_drop`` (the configs' defaults unless given)."""
    tokens = np.random.default_rng(0).integers(0, V, batch * T * 4 + 1).astype(np.uint8)
    tcfg = TrainConfig(batch_size=batch, seq_len=T)
    config = ModelConfig(vocab_size=V, embedding=E, hidden=h, layers=layers, **regularised)
    model = CharLSTM(config).to(device).train()
    batches = StreamBatches(tokens, batch, T)
    precision = choose_precision("auto", model, batches.batch(0), device)
    optimizer = make_optimizer(model, tcfg.lr, tcfg.weight_decay, device)
    learner = Learner.of(model, optimizer, precision, tcfg.grad_clip)
    x, y = (t.to(device) for t in batches.batch(0))
    state = None

    def step() -> int:
        nonlocal state
        _, state = train_step(learner, x, y, state, 1e-3)
        return batch * T

    return rate(step, device, seconds), precision


def matmul_params(h: int, layers: int) -> int:
    """Parameters that take part in matrix products per character (the embedding is a lookup)."""
    lstm = 4 * h * (E + h) + (layers - 1) * 4 * h * (h + h)
    return lstm + h * V


def plain_sampling(model: CharLSTM, streams: int, device: torch.device, seconds: float) -> float:
    """nn.LSTM called once per character with carried state, softmax + multinomial."""
    tok = torch.zeros(1, streams, dtype=torch.long, device=device)
    state = None

    @torch.no_grad()
    def step() -> int:
        nonlocal tok, state
        out, state = model.lstm(model.embed(tok), state)
        probs = model.head(out[-1]).div(0.8).softmax(-1)
        tok = torch.multinomial(probs, 1).view(1, streams)
        return streams

    return rate(step, device, seconds)


def charlstm_sampling(model: CharLSTM, streams: int, precision: str, seconds: float) -> float:
    """What ``charlstm sample`` runs (always on the CPU): every stream draws a chunk of
    characters per compiled call."""
    stepper = Stepper(copy.deepcopy(model).cpu(), precision)
    slots, primed = Slots(stepper, streams), stepper.read([0])
    for i in range(streams):
        slots.add(primed, SamplingRule(0.8), np.random.default_rng(i))
    try:
        return rate(lambda: slots.draw(PIECE_TOKENS).size, torch.device("cpu"), seconds)
    finally:
        slots.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", help="LAYERSxHIDDEN, e.g. 2x256")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dropout", type=float, help="charlstm's training: locked dropout (default 0)")
    parser.add_argument("--weight-drop", type=float, help="charlstm's training: weight drop (default 0.25)")
    parser.add_argument("--training-only", action="store_true", help="charlstm's training speed alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = args.shapes or (["2x256", "2x512", "3x512"] if device.type == "cuda" else ["2x256", "2x512"])
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"# {hw}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, device {device}"
    )
    if args.training_only:
        keep_freed_memory()
        given = {"dropout": args.dropout, "weight_drop": args.weight_drop}
        regularised = {k: v for k, v in given.items() if v is not None}
        config = ModelConfig(**regularised)
        print("| shape, batch | dropout | weight drop | charlstm training chars/s |\n|---|---|---|---|")
        for shape in shapes:
            layers, hidden = map(int, shape.split("x"))
            torch.manual_seed(0)
            ours, precision = charlstm_training(hidden, layers, args.batch, device, args.seconds, **regularised)
            row = f"| {shape} b{args.batch} | {config.dropout:g} | {config.weight_drop:g} | {ours:,.0f} ({precision}) |"
            print(row, flush=True)
        return
    peaks = {
        "fp32": matmul_peak(torch.float32, device, args.seconds),
        "bf16": matmul_peak(torch.bfloat16, device, args.seconds),
    }
    print(f"# matmul peak: fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s")
    training, sampling = [], []
    plains = {shape: plain_training(*map(int, shape.split("x")), args.batch, device, args.seconds) for shape in shapes}
    if device.type == "cpu":
        keep_freed_memory()  # as charlstm train does, after the plain loops: a plain script has glibc's defaults
    for shape in shapes:
        layers, hidden = map(int, shape.split("x"))
        torch.manual_seed(0)
        plain = plains[shape]
        ours, precision = charlstm_training(hidden, layers, args.batch, device, args.seconds)
        flops = 6 * matmul_params(hidden, layers) * ours
        training.append(
            f"| {shape} b{args.batch} | {plain:,.0f} | {ours:,.0f} ({precision}) | {ours / plain:.2f}x "
            f"| {flops / 1e9:,.0f} G ({flops / peaks[precision]:.0%} of {precision} peak) |"
        )
        model = CharLSTM(ModelConfig(vocab_size=V, embedding=E, hidden=hidden, layers=layers)).to(device).eval()
        for n in (1, 64):
            base = plain_sampling(model, n, device, args.seconds)
            ours32, ours16 = (charlstm_sampling(model, n, p, args.seconds) for p in ("fp32", "bf16"))
            ratios = f"{ours32:,.0f} | {ours32 / base:.1f}x | {ours16:,.0f} | {ours16 / base:.1f}x"
            sampling.append(f"| {shape} | {n} | {base:,.0f} | {ratios} |")
        print(f"# {shape} measured", flush=True)
    print("\nTraining, chars/s:\n")
    print("| shape, batch | plain fp32 nn.LSTM | charlstm | ratio | charlstm FLOP/s |")
    print("|---|---|---|---|---|")
    print("\n".join(training))
    print("\nSampling, chars/s (plain: nn.LSTM called once per character; charlstm: `charlstm sample`'s step):\n")
    print("| shape | streams | plain nn.LSTM | charlstm fp32 | ratio | charlstm bf16 | ratio |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(sampling))


if __name__ == "__main__":
    main()
