"""Training: truncated BPTT over contiguous streams, AdamW, clipping, schedule, evaluation,
checkpoints. Progress is reported through a callback of events; nothing here prints."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlstm import checkpoint as ckpt
from charlstm.config import DEFAULT_EPOCHS, ModelConfig, TrainConfig, option
from charlstm.corpus import (
    KNOWN_CORPORA,
    CharVocab,
    ProgressFn,
    StreamBatches,
    TokenizedCorpus,
    atomic_write,
    check_trainable,
    load_corpus,
    resolve_corpus,
    split_tokens,
)
from charlstm.errors import UserError
from charlstm.model import CharLSTM, State, detach_state, first_stream
from charlstm.sample import compile_kernels, generate
from charlstm.schedule import get_lr, plateau_update

EVAL_STREAMS = 64  # evaluation splits the text into this many carried-state streams
METRICS = "metrics.jsonl"
BETAS = (0.9, 0.99)  # a shorter second-moment memory than the usual 0.999: 1.488 vs 1.491 in the 120 s sweep


# ----------------------------------------------------------------------------- events
@dataclass
class Started:
    run_dir: Path
    params: int
    device: str
    precision: str
    chars_per_step: int
    train_chars: int
    val_chars: int
    resumed_step: int


@dataclass
class Progress:
    step: int
    epoch: float
    loss: float
    lr: float
    chars_per_sec: float
    elapsed: float
    fraction: float  # of the run's budget, 0..1
    remaining: float | None  # seconds, estimated


@dataclass
class Evaluated:
    step: int
    val_loss: float
    is_best: bool
    sample: str


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: float
    elapsed: float
    best_val_loss: float
    last_val_loss: float
    train_loss: float
    chars_per_sec: float
    stopped_by: str  # "max_steps", "epochs", "max_time", "signal", "nan"
    signal: int | None = None


Event = Started | Progress | Evaluated
EventFn = Callable[[Event], None]


@dataclass
class StopFlag:
    """Set by a signal handler; the loop finishes its step, saves and returns."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """While inside, SIGINT and SIGTERM ask the loop to stop after the current step."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; refuses a device this machine does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available, expected --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for but MPS is not available, expected --device cpu or auto")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _time_steps(model: CharLSTM, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str) -> float:
    """Median seconds of a forward + backward pass at ``precision`` (first call is warm-up)."""
    times = []
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[0]


def choose_precision(name: str, model: CharLSTM, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> str:
    """``auto`` measures fp32 against bf16 autocast on this model and batch and keeps the faster."""
    if name != "auto":
        if name == "bf16" and not bf16_supported(device):
            raise UserError(f"--precision bf16 is not supported on {device.type} here, expected fp32 or auto")
        return name
    if not bf16_supported(device):
        return "fp32"
    probe = copy.deepcopy(model).train()
    x, y = (t[:, : min(32, t.shape[1])].to(device) for t in batch)
    with torch.random.fork_rng(devices=[]):  # dropout in the probe must not move the run's RNG
        fp32 = _time_steps(probe, x, y, device, "fp32")
        bf16 = _time_steps(probe, x, y, device, "bf16")
    return "bf16" if bf16 < fp32 * 0.9 else "fp32"


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    loss: float  # nats per character
    chars: int

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def evaluate(
    model: CharLSTM,
    tokens: np.ndarray,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    streams: int = EVAL_STREAMS,
) -> EvalResult:
    """Mean loss over every predictable character of ``tokens`` (all N - 1 of them).

    The text is read as ``streams`` contiguous pieces in parallel, state carried from chunk to
    chunk within each piece. Each piece but the first starts from the state left by reading the
    ``seq_len`` characters before it (unscored), so no piece starts cold in the middle of the
    text; the few characters left over after the last piece continue its state.
    """
    device = torch.device(device)
    streams = max(1, min(streams, (len(tokens) - 1) // max(seq_len, 1)))
    batches = StreamBatches(tokens, streams, seq_len, drop_last=False)
    was_training = model.training
    model.eval()
    total, count, state = torch.zeros((), dtype=torch.float64, device=device), 0, None

    def score(x: torch.Tensor, y: torch.Tensor, state: State | None) -> State:
        nonlocal total, count
        with autocast(device, precision):
            logits, state = model(x.to(device), state)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum").double()
        count += y.numel()
        return state

    state = _warm_streams(model, tokens, batches, device, precision)
    for i in range(len(batches)):
        state = score(*batches.batch(i), state)
    end = streams * batches.stream_len  # last target read so far
    if end < len(tokens) - 1:
        rest = torch.from_numpy(np.asarray(tokens[end:], dtype=np.int64))[None]  # (1, leftover + 1)
        last = None if state is None else (state[0][:, -1:].contiguous(), state[1][:, -1:].contiguous())
        score(rest[:, :-1], rest[:, 1:], last)
    model.train(was_training)
    return EvalResult(loss=float(total) / max(count, 1), chars=count)


def _warm_streams(
    model: CharLSTM, tokens: np.ndarray, batches: StreamBatches, device: torch.device, precision: str
) -> State | None:
    """State of every stream after reading the text just before it; stream 0 starts at zero."""
    if batches.streams < 2:
        return None
    width = min(batches.seq_len, batches.stream_len)
    starts = np.maximum(batches.starts[:, 0], batches.stream_len) - width  # stream 0 borrows stream 1's
    idx = starts[:, None] + np.arange(width, dtype=np.int64)  # (B, W)
    x = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
    with autocast(device, precision):
        _, (h, c) = model(x)
    h, c = h.float(), c.float()
    h[:, 0].zero_()
    c[:, 0].zero_()
    return h, c


# ----------------------------------------------------------------------------- the run
@dataclass
class RunState:
    """Where a run stands; saved as the checkpoint's ``progress`` dict."""

    step: int = 0
    epoch: int = 0  # completed passes over the training split
    chunk: int = 0  # next chunk of the current pass
    elapsed: float = 0.0  # seconds trained, summed over resumed sessions
    best_val_loss: float = math.inf
    last_val_loss: float = math.inf
    plateau_scale: float = 1.0
    loss_sum: float = 0.0  # training loss summed since the last log line
    loss_count: int = 0
    precision: str = "fp32"
    corpus_sha256: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    """Everything a training session works on."""

    tcfg: TrainConfig
    mcfg: ModelConfig
    run_dir: Path
    corpus: TokenizedCorpus
    batches: StreamBatches
    val_tokens: np.ndarray
    model: CharLSTM
    optimizer: torch.optim.Optimizer
    device: torch.device
    state: RunState
    hidden: State | None = None

    @property
    def epoch_float(self) -> float:
        return self.state.epoch + self.state.chunk / len(self.batches)

    def fraction(self) -> float:
        """Share of the budget spent: the largest over steps, epochs and time."""
        t = self.tcfg
        parts = []
        if t.max_steps:
            parts.append(self.state.step / t.max_steps)
        parts.append(self.epoch_float / target_epochs(t))
        if t.max_time:
            parts.append(self.state.elapsed / t.max_time)
        return min(1.0, max(parts))


def target_epochs(t: TrainConfig) -> float:
    return t.epochs if t.epochs is not None else (math.inf if t.has_budget else DEFAULT_EPOCHS)


def default_run_dir(corpus_spec: str) -> Path:
    name = corpus_spec if corpus_spec in KNOWN_CORPORA else Path(corpus_spec).stem or "run"
    return Path("checkpoints") / name


def make_optimizer(model: CharLSTM, tcfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only; fused where this torch offers it."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=tcfg.lr, betas=BETAS, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=tcfg.lr, betas=BETAS, foreach=True)


def prepare_corpus(tcfg: TrainConfig, progress: ProgressFn | None) -> TokenizedCorpus:
    path = resolve_corpus(tcfg.corpus, progress=progress)
    return load_corpus(path, tcfg.encoding)


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory, refusing to replace an existing run unless asked to."""
    existing = [n for n in (ckpt.BEST, ckpt.LAST, METRICS) if (run_dir / n).exists()]
    if existing and not overwrite:
        raise UserError(
            f"run directory {str(run_dir)!r} already holds a run ({', '.join(existing)}); pass "
            f"--resume {run_dir} to continue it, --overwrite to start afresh, or --out DIR"
        )
    for name in existing:
        (run_dir / name).unlink()
    remove_stale_temporaries(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to run directory {str(run_dir)!r} ({e.strerror}), expected a writable folder"
        ) from None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files that a killed process left mid-write (``.last.pt.XXXX.tmp``)."""
    for stale in run_dir.glob(".*.tmp") if run_dir.is_dir() else ():
        stale.unlink(missing_ok=True)


def new_run(tcfg: TrainConfig, mcfg: ModelConfig, overwrite: bool = False, progress: ProgressFn | None = None) -> Run:
    """Build a fresh run: corpus, splits, model, optimizer, run directory."""
    corpus = prepare_corpus(tcfg, progress)
    train_tokens, val_tokens = split_tokens(corpus.tokens, tcfg.val_fraction)
    check_trainable(train_tokens, val_tokens, tcfg.batch_size, tcfg.seq_len)
    mcfg = ModelConfig.from_dict({**mcfg.to_dict(), "vocab_size": len(corpus.vocab)})
    device = resolve_device(tcfg.device)
    run_dir = Path(tcfg.out) if tcfg.out else default_run_dir(tcfg.corpus)
    prepare_run_dir(run_dir, overwrite)
    tcfg = TrainConfig.from_dict({**tcfg.to_dict(), "out": str(run_dir)})
    torch.manual_seed(tcfg.seed)
    model = CharLSTM(mcfg).to(device).train()
    batches = StreamBatches(train_tokens, tcfg.batch_size, tcfg.seq_len)
    precision = choose_precision(tcfg.precision, model, batches.batch(0), device)
    state = RunState(precision=precision, corpus_sha256=corpus.sha256)
    optimizer = make_optimizer(model, tcfg, device)
    return Run(tcfg, mcfg, run_dir, corpus, batches, val_tokens, model, optimizer, device, state)


# ----------------------------------------------------------------------------- checkpoints
def payload_of(run: Run) -> dict[str, Any]:
    """Everything needed to sample, evaluate and resume, as tensors and plain values."""
    st = run.state
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    hidden = [t.detach().cpu() for t in run.hidden] if run.hidden is not None else None
    progress = {k: v for k, v in st.__dict__.items() if k != "metrics"}
    return {
        "format_version": ckpt.FORMAT_VERSION,
        "model_config": run.mcfg.to_dict(),
        "train_config": run.tcfg.to_dict(),
        "vocab": run.corpus.vocab.to_string(),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": _cpu(run.optimizer.state_dict()),
        "progress": progress,
        "rng": rng,
        "hidden": hidden,
        "metrics": list(st.metrics),
        "corpus": {"path": str(run.corpus.path), "sha256": run.corpus.sha256, "chars": int(len(run.corpus.tokens))},
        "device_type": run.device.type,
        "epoch": run.epoch_float,
    }


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


@contextlib.contextmanager
def _writing(run: Run, name: str) -> Iterator[None]:
    """Turn a failed write (disk full, folder gone) into one clear error; the old file stays."""
    try:
        yield
    except OSError as e:
        raise UserError(
            f"could not write {run.run_dir / name} ({e.strerror or e}) at step {run.state.step}; the previous "
            f"{name} is intact, free some space or pass --out to another folder, then --resume"
        ) from None


def save(run: Run, names: tuple[str, ...]) -> None:
    """Write the run's checkpoint under each of ``names`` in its run directory."""
    payload = payload_of(run)
    for name in names:
        with _writing(run, name):
            ckpt.save_checkpoint(run.run_dir / name, payload)


def log_metric(run: Run, record: dict[str, Any]) -> None:
    """Record one metrics line in the run state and append it to metrics.jsonl."""
    run.state.metrics.append(record)
    with _writing(run, METRICS), open(run.run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- steps
def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
    """One optimizer step on chunk (x, y), each (B, T); returns the loss as a 0-d tensor."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    state = detach_state(run.hidden) if run.hidden is not None else None
    with autocast(run.device, run.state.precision):
        logits, new_state = run.model(x, state)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.tcfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.tcfg.grad_clip, foreach=True)
    run.optimizer.step()
    run.hidden = detach_state(new_state)
    return loss.detach()


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk at the run's cursor; a new pass starts from zero state."""
    st = run.state
    if st.chunk >= len(run.batches):
        st.epoch, st.chunk, run.hidden = st.epoch + 1, 0, None
    if st.chunk == 0:
        run.hidden = None
    x, y = run.batches.batch(st.chunk)
    pin = run.device.type == "cuda"
    return (t.pin_memory().to(run.device, non_blocking=True) if pin else t for t in (x, y))  # type: ignore[return-value]


def current_lr(run: Run) -> float:
    t = run.tcfg
    return get_lr(
        t.schedule, t.lr, run.state.step, run.fraction(), t.warmup_steps, t.min_lr_ratio, run.state.plateau_scale
    )


def stop_reason(run: Run, flag: StopFlag | None) -> str | None:
    t, st = run.tcfg, run.state
    if flag is not None and flag.signum is not None:
        return "signal"
    if t.max_steps and st.step >= t.max_steps:
        return "max_steps"
    if run.epoch_float >= target_epochs(t) - 1e-12:
        return "epochs"
    if t.max_time and st.elapsed >= t.max_time:
        return "max_time"
    return None


def preview(run: Run) -> str:
    """A short sample from the current weights, seeded by step so a run's previews repeat."""
    if run.tcfg.sample_chars <= 0:
        return ""
    rng = np.random.default_rng(run.tcfg.seed + run.state.step)
    start = None if run.hidden is None else first_stream(run.hidden)
    text = generate(run.model, run.corpus.vocab, "", run.tcfg.sample_chars, 0.8, rng=rng, start=start)
    return "".join(text)


def run_eval(run: Run, on_event: EventFn) -> None:
    """Evaluate the validation split, update best/last, write checkpoints and a metrics line."""
    st = run.state
    result = evaluate(run.model, run.val_tokens, run.tcfg.seq_len, run.device, st.precision)
    is_best = result.loss < st.best_val_loss
    if run.tcfg.schedule == "plateau" and math.isfinite(st.best_val_loss):
        st.plateau_scale = plateau_update(st.plateau_scale, result.loss, st.best_val_loss)
    st.last_val_loss = result.loss
    st.best_val_loss = min(st.best_val_loss, result.loss)
    log_metric(
        run,
        {
            "type": "eval",
            "step": st.step,
            "epoch": round(run.epoch_float, 4),
            "val_loss": result.loss,
            "val_bpc": result.bpc,
            "best": is_best,
            "elapsed": round(st.elapsed, 3),
        },
    )
    save(run, (ckpt.LAST, ckpt.BEST) if is_best else (ckpt.LAST,))
    on_event(Evaluated(st.step, result.loss, is_best, preview(run)))


# ----------------------------------------------------------------------------- resume
# Options that may change when a run is resumed; any other differing value is refused.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "epochs", "max_time", "eval_every", "save_every", "log_every", "sample_chars", "device"}
)


def _check_overrides(stored: dict[str, Any], given: dict[str, Any], allowed: frozenset[str]) -> None:
    for key, value in given.items():
        if key not in allowed and key in stored and stored[key] != value:
            raise UserError(
                f"{option(key)} {value!r} differs from the run's {stored[key]!r}; a resumed run keeps its "
                f"architecture, data and optimiser settings (only --max-steps, --epochs, --max-time and "
                f"the logging options may change), so drop the option or start a new run with --out"
            )


def resume_run(
    path: str | Path,
    train_overrides: dict[str, Any],
    model_overrides: dict[str, Any],
    progress: ProgressFn | None = None,
) -> Run:
    """Rebuild a run from its ``last.pt`` exactly as it was saved."""
    payload = ckpt.load_checkpoint(path, prefer=ckpt.LAST)
    source = Path(payload["_path"])
    if source.name != ckpt.LAST or any(payload.get(k) is None for k in ("optimizer", "rng", "progress")):
        raise UserError(
            f"{str(source)!r} cannot be resumed (only a run's {ckpt.LAST} holds the optimizer, RNG and data "
            f"position), expected the run directory or its {ckpt.LAST}"
        )
    run_dir = source.parent
    _check_overrides(payload["model_config"], model_overrides, frozenset())
    _check_overrides(payload["train_config"], train_overrides, RESUMABLE_CHANGES)
    changes = {k: v for k, v in train_overrides.items() if k in RESUMABLE_CHANGES}
    tcfg = TrainConfig.from_dict({**payload["train_config"], **changes, "out": str(run_dir)})
    mcfg = ModelConfig.from_dict(payload["model_config"])
    corpus = prepare_corpus(tcfg, progress)
    if corpus.sha256 != payload["progress"]["corpus_sha256"]:
        raise UserError(
            f"the corpus {tcfg.corpus!r} has changed since the run started (sha256 {corpus.sha256[:12]}... "
            f"instead of {payload['progress']['corpus_sha256'][:12]}...); resume needs the same text"
        )
    if corpus.vocab != CharVocab(payload["vocab"]):
        raise UserError("the corpus vocabulary differs from the checkpoint's; resume needs the same text")
    train_tokens, val_tokens = split_tokens(corpus.tokens, tcfg.val_fraction)
    device = resolve_device(tcfg.device)
    model = CharLSTM(mcfg).to(device).train()
    model.load_state_dict(payload["model"])
    optimizer = make_optimizer(model, tcfg, device)
    optimizer.load_state_dict(payload["optimizer"])
    state = RunState(**{**payload["progress"], "metrics": list(payload["metrics"])})
    batches = StreamBatches(train_tokens, tcfg.batch_size, tcfg.seq_len)
    run = Run(tcfg, mcfg, run_dir, corpus, batches, val_tokens, model, optimizer, device, state)
    if payload["hidden"] is not None:
        run.hidden = (payload["hidden"][0].to(device), payload["hidden"][1].to(device))
    restore_rng(payload["rng"], device)
    remove_stale_temporaries(run_dir)
    rewrite_metrics(run)
    return run


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def rewrite_metrics(run: Run) -> None:
    """metrics.jsonl as of the checkpoint: lines written after it was saved are dropped."""
    text = "".join(json.dumps(r) + "\n" for r in run.state.metrics)
    with _writing(run, METRICS):
        atomic_write(run.run_dir / METRICS, lambda f: f.write(text), mode="w")


# ----------------------------------------------------------------------------- the loop
@dataclass
class _Window:
    """Throughput and loss bookkeeping between two log lines."""

    time: float
    step: int
    loss: torch.Tensor


def _finite_window_loss(run: Run, window: _Window) -> float:
    """Fold the window's loss into the run state (one host sync) and return the mean so far."""
    st = run.state
    st.loss_sum += float(window.loss)
    window.loss.zero_()
    return st.loss_sum / max(st.loss_count, 1)


def _log(run: Run, window: _Window, mean_loss: float, lr: float, t0: float, f0: float, on_event: EventFn) -> None:
    st, now = run.state, time.perf_counter()
    cps = (st.step - window.step) * run.batches.streams * run.batches.seq_len / max(now - window.time, 1e-9)
    frac = run.fraction()
    remaining = (1 - frac) * (now - t0) / (frac - f0) if frac > f0 else None
    log_metric(
        run,
        {
            "type": "train",
            "step": st.step,
            "epoch": round(run.epoch_float, 4),
            "loss": mean_loss,
            "lr": lr,
            "chars_per_sec": round(cps, 1),
            "elapsed": round(st.elapsed, 3),
        },
    )
    on_event(Progress(st.step, run.epoch_float, mean_loss, lr, cps, st.elapsed, frac, remaining))
    st.loss_sum, st.loss_count = 0.0, 0
    window.time, window.step = now, st.step


def _announce(run: Run, on_event: EventFn, stop: StopFlag | None) -> None:
    """Emit ``Started``; refuse to continue a run whose budget is already spent."""
    st, t = run.state, run.tcfg
    reason = stop_reason(run, stop)
    if reason is not None and reason != "signal":
        raise UserError(
            f"the run already finished at step {st.step} ({option(reason)} reached), expected a larger "
            f"--max-steps, --epochs or --max-time to train longer"
        )
    chars = t.batch_size * t.seq_len
    on_event(
        Started(
            run.run_dir,
            run.model.num_params(),
            str(run.device),
            st.precision,
            chars,
            len(run.batches.tokens),
            len(run.val_tokens),
            st.step,
        )
    )


def _close(run: Run, window: _Window, reason: str, saved_at: int, evaluated_at: int, on_event: EventFn) -> str:
    """End the run: fold the steps since the last sync, then save (signal) or evaluate (budget)."""
    if reason == "nan" or not math.isfinite(_finite_window_loss(run, window)):
        return "nan"
    if reason == "signal" and saved_at != run.state.step:
        save(run, (ckpt.LAST,))
    elif reason != "signal" and evaluated_at != run.state.step:
        run_eval(run, on_event)
    return reason


def train(run: Run, on_event: EventFn | None = None, stop: StopFlag | None = None) -> TrainResult:
    """Train until the budget is spent or ``stop`` is set; evaluate and checkpoint on the way."""
    on_event = on_event or (lambda event: None)
    st, t = run.state, run.tcfg
    _announce(run, on_event, stop)
    if t.sample_chars > 0:
        compile_kernels()  # sampling (previews, then `charlstm sample`): compiled once per machine, not on the clock
    t0, elapsed0, f0, step0 = time.perf_counter(), st.elapsed, run.fraction(), st.step
    window = _Window(t0, st.step, torch.zeros((), device=run.device))
    reason, mean_loss, evaluated_at, saved_at = None, math.nan, -1, -1
    while reason is None:
        lr = current_lr(run)
        x, y = next_batch(run)
        window.loss += train_step(run, x, y, lr)
        st.step, st.chunk, st.loss_count = st.step + 1, st.chunk + 1, st.loss_count + 1
        st.elapsed = elapsed0 + time.perf_counter() - t0
        due_log, due_eval, due_save = (st.step % n == 0 for n in (t.log_every, t.eval_every, t.save_every))
        if due_log or due_eval or due_save:  # the only host syncs: fold the loss, refuse to save NaN
            mean_loss = _finite_window_loss(run, window)
            if not math.isfinite(mean_loss):
                reason = "nan"
                break
            if due_log:
                _log(run, window, mean_loss, lr, t0, f0, on_event)
        if due_eval:
            run_eval(run, on_event)
            evaluated_at = saved_at = st.step
            window.time = time.perf_counter()
        elif due_save:
            save(run, (ckpt.LAST,))
            saved_at = st.step
        st.elapsed = elapsed0 + time.perf_counter() - t0
        reason = stop_reason(run, stop)
    reason = _close(run, window, reason, saved_at, evaluated_at, on_event)
    speed = (st.step - step0) * t.batch_size * t.seq_len / max(st.elapsed - elapsed0, 1e-9)
    return TrainResult(
        run.run_dir,
        st.step,
        run.epoch_float,
        st.elapsed,
        st.best_val_loss,
        st.last_val_loss,
        mean_loss,
        speed,
        reason,
        stop.signum if stop else None,
    )
