"""The ``charlstm`` command: parse options, delegate to the library, render results.

This is the only module that imports typer or prints. User mistakes (``UserError`` and bad
option values) become one ``error: ...`` line on stderr and exit code 2; Ctrl-C exits 130;
anything else is an internal fault: exit 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Iterator
from dataclasses import fields
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

import charlstm
from charlstm.config import ModelConfig, SampleConfig, TrainConfig
from charlstm.errors import UserError

err = Console(stderr=True, highlight=False)


class _Group(TyperGroup):
    """Runs the app with one error path for every command (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except UserError as e:
            code = _fail(str(e), 2)
        except typer.TyperException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed; nothing is wrong
                code = getattr(e, "exit_code", 2)
            else:
                code = _fail(e.format_message() + " (see --help)", getattr(e, "exit_code", 2))
        except (KeyboardInterrupt, typer.Abort):
            code = _fail("interrupted", 130)
        except Exception as e:  # an internal fault, not the user's
            if "--debug" in argv:
                traceback.print_exc()
            code = _fail(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", 1)
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return code


app = typer.Typer(
    cls=_Group,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train a stacked character-level LSTM on any text and generate text in its style.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlstm {charlstm.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """charlstm: char-rnn for today."""


# ----------------------------------------------------------------------------- helpers
def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def _given(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Options the user actually typed (typer passes None for the rest) that belong to ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def _h(text: str, cls: type, name: str) -> str:
    return f"{text} [dim]\\[default: {_default(cls, name)}][/dim]"


T, M, S = TrainConfig, ModelConfig, SampleConfig
DATA, MODEL, OPTIM, BUDGET, OUTPUT, HW = "Data", "Model", "Optimization", "Budget", "Output", "Hardware"


# ----------------------------------------------------------------------------- train
@app.command()
def train(
    corpus: Annotated[
        str | None,
        typer.Option(
            help=_h("Path to a UTF-8 text file, or a known corpus name (tinyshakespeare).", T, "corpus"),
            rich_help_panel=DATA,
        ),
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help=_h("Text encoding of the corpus file.", T, "encoding"), rich_help_panel=DATA)
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help=_h("Contiguous tail of the corpus held out for validation.", T, "val_fraction"), rich_help_panel=DATA
        ),
    ] = None,
    layers: Annotated[
        int | None, typer.Option(help=_h("Stacked LSTM layers.", M, "layers"), rich_help_panel=MODEL)
    ] = None,
    hidden: Annotated[
        int | None, typer.Option(help=_h("LSTM units per layer.", M, "hidden"), rich_help_panel=MODEL)
    ] = None,
    embedding: Annotated[
        int | None, typer.Option(help=_h("Character embedding size.", M, "embedding"), rich_help_panel=MODEL)
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help=_h("Dropout between LSTM layers and before the head, in [0, 1).", M, "dropout"), rich_help_panel=MODEL
        ),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            help=_h("Characters per chunk of truncated backpropagation through time.", T, "seq_len"),
            rich_help_panel=OPTIM,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=_h("Parallel contiguous streams per batch.", T, "batch_size"), rich_help_panel=OPTIM),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=_h("Peak learning rate of AdamW.", T, "lr"), rich_help_panel=OPTIM)
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help=_h("AdamW weight decay on weight matrices.", T, "weight_decay"), rich_help_panel=OPTIM),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option(help=_h("Clip the global gradient norm to this (0: off).", T, "grad_clip"), rich_help_panel=OPTIM),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help=_h("Learning-rate schedule: cosine, step, plateau or constant.", T, "schedule"), rich_help_panel=OPTIM
        ),
    ] = None,
    warmup_steps: Annotated[
        int | None,
        typer.Option(help=_h("Steps of linear learning-rate warm-up.", T, "warmup_steps"), rich_help_panel=OPTIM),
    ] = None,
    min_lr_ratio: Annotated[
        float | None,
        typer.Option(
            help=_h("Floor of the cosine/plateau schedule, as a fraction of --lr.", T, "min_lr_ratio"),
            rich_help_panel=OPTIM,
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps.", rich_help_panel=BUDGET)
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many passes over the training split (10 when no budget is given).",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    max_time: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds; the schedule anneals over this budget.", rich_help_panel=BUDGET
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="Run directory for best.pt, last.pt and metrics.jsonl."
            " [dim]\\[default: checkpoints/<corpus name>][/dim]",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(
            help=_h("Evaluate the whole validation split and save every N steps.", T, "eval_every"),
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    save_every: Annotated[
        int | None, typer.Option(help=_h("Write last.pt every N steps.", T, "save_every"), rich_help_panel=OUTPUT)
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option(help=_h("Report training loss and speed every N steps.", T, "log_every"), rich_help_panel=OUTPUT),
    ] = None,
    sample_chars: Annotated[
        int | None,
        typer.Option(
            help=_h("Characters of sample shown at each evaluation (0: none).", T, "sample_chars"),
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue the run in this directory (or from this last.pt) exactly where it stopped.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Start afresh in a run directory that already holds a run.", rich_help_panel=OUTPUT)
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(help=_h("Random seed: the same seed repeats a CPU run.", T, "seed"), rich_help_panel=HW),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_h("auto, cpu, cuda or mps.", T, "device"), rich_help_panel=HW)
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help=_h("auto (measured: the faster of the two), fp32 or bf16.", T, "precision"), rich_help_panel=HW
        ),
    ] = None,
) -> None:
    """Train a model; progress is shown live, checkpoints go to the run directory."""
    from charlstm import train as training

    values = dict(locals())
    given_t, given_m = _given(values, TrainConfig), _given(values, ModelConfig)
    if not resume:
        tcfg, mcfg = TrainConfig(**given_t), ModelConfig(**given_m)  # validate before anything is shown
    with TrainView() as view:
        if resume:
            run = training.resume_run(resume, given_t, given_m, progress=view.download)
        else:
            run = training.new_run(tcfg, mcfg, overwrite=overwrite, progress=view.download)
        with training.stop_on_signals(training.StopFlag()) as flag:
            result = training.train(run, view.on_event, flag)
    view.summary(result)
    if result.stopped_by == "signal":
        # Plain write, not rich: the command must survive any terminal width and any path.
        sys.stderr.write(
            f"stopped by signal; resume with:\n  charlstm train --resume {shlex.quote(str(result.run_dir))}\n"
        )
        raise typer.Exit(130 if result.signal == signal.SIGINT else 143)
    if result.stopped_by == "nan":
        raise UserError(
            f"the training loss became NaN or infinite by step {result.step}; best.pt and the last good "
            f"last.pt are kept, try a lower --lr or --grad-clip"
        )


class TrainView:
    """Turns training events into a live progress bar, evaluation lines and a summary table."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=err,
            transient=False,
        )
        self.task: Any = None
        self.download_task: Any = None
        self.val = math.nan

    def __enter__(self) -> TrainView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.live.is_started:  # stopping a display never shown would print a blank line
            self.bar.stop()

    def _show(self) -> None:
        """Start the live display on first use, so a failure before it shows no empty bar."""
        if not self.bar.live.is_started:
            self.bar.start()

    def download(self, done: int, total: int | None) -> None:
        self._show()
        if self.download_task is None:
            self.download_task = self.bar.add_task("download", total=total, status="corpus")
        self.bar.update(self.download_task, completed=done)

    def on_event(self, event: Any) -> None:
        from charlstm import train as training

        if isinstance(event, training.Started):
            self._show()
            self.task = self.bar.add_task("train", total=1.0, status="starting")
            resumed = f", resumed at step {event.resumed_step}" if event.resumed_step else ""
            self.bar.console.print(
                f"[bold]charlstm[/bold] {event.params:,} parameters on {event.device} ({event.precision}), "
                f"{event.train_chars:,} training / {event.val_chars:,} validation characters, "
                f"run directory {event.run_dir}{resumed}"
            )
        elif isinstance(event, training.Progress):
            left = f"{_seconds(event.remaining)} left" if event.remaining is not None else ""
            status = (
                f"step {event.step}  loss {event.loss:.3f}  val {_loss(self.val)}  lr {event.lr:.2e}  "
                f"{event.chars_per_sec / 1000:.1f}k chars/s  {left}"
            )
            self.bar.update(self.task, completed=event.fraction, status=status)
        elif isinstance(event, training.Evaluated):
            self.val = event.val_loss
            mark = " [green](best)[/green]" if event.is_best else ""
            self.bar.console.print(f"step {event.step}: val loss {event.val_loss:.4f}{mark}")
            if event.sample:
                self.bar.console.print(event.sample, style="dim", markup=False)

    def summary(self, result: Any) -> None:
        table = Table(title="charlstm train", show_header=False)
        rows = [
            ("run directory", str(result.run_dir)),
            ("steps", f"{result.step:,}"),
            ("epochs", f"{result.epoch:.2f}"),
            ("time", _seconds(result.elapsed)),
            ("stopped by", result.stopped_by),
            (
                "best val loss",
                f"{_loss(result.best_val_loss)} nats/char ({_loss(result.best_val_loss / math.log(2))} bpc)",
            ),
            ("last val loss", _loss(result.last_val_loss)),
            ("train loss", f"{result.train_loss:.4f}"),
            ("speed", f"{result.chars_per_sec:,.0f} chars/s (this session, evaluations included)"),
        ]
        for key, value in rows:
            table.add_row(key, value)
        err.print(table)


def _loss(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


# ----------------------------------------------------------------------------- sample
@app.command()
def sample(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint file, or a run directory (meaning its best.pt).")],
    prompt: Annotated[str, typer.Option(help="Text the model continues (printed first).")] = S.prompt,
    length: Annotated[int, typer.Option(help="Characters to generate per sample.")] = S.length,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature; 0 means greedy (always the likeliest).")
    ] = S.temperature,
    top_k: Annotated[int | None, typer.Option(help="Sample only among the k likeliest characters.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Sample only within the smallest set of probability >= p.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same text. [dim]\\[default: random][/dim]")
    ] = None,
    num_samples: Annotated[int, typer.Option(help="How many samples to draw.")] = S.num_samples,
    unknown: Annotated[
        str, typer.Option(help="Prompt characters the model never saw: error, or skip them with a warning.")
    ] = S.unknown,
    precision: Annotated[
        str,
        typer.Option(
            help="Weights the sampling step reads: fp32 (exact), bf16 (half the bytes to read: up to twice as "
            "fast), or auto (the precision the model trained in)."
        ),
    ] = S.precision,
) -> None:
    """Generate text from a trained model; characters stream to stdout as they are made."""
    import numpy as np

    from charlstm import checkpoint as ckpt
    from charlstm import sample as sampling

    cfg = SampleConfig(prompt, length, temperature, top_k, top_p, seed, num_samples, unknown, precision)
    payload = ckpt.load_checkpoint(checkpoint)
    model, vocab = ckpt.model_from_payload(payload)
    text, dropped = sampling.prepare_prompt(vocab, cfg.prompt, cfg.unknown)
    if dropped:
        err.print(f"warning: dropped prompt characters the model never saw: {', '.join(map(repr, dropped))}")
    seed_used = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
    if cfg.seed is None:  # shown first, so that even an interrupted sample can be repeated
        err.print(f"[dim]seed {seed_used} (pass --seed {seed_used} to repeat this text)[/dim]")
    rng, warm = np.random.default_rng(seed_used), ckpt.warm_state_of(payload)
    stepper = sampling.Stepper(model, sampling.resolve_precision(cfg.precision, ckpt.describe(payload)["precision"]))
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # generated text is UTF-8 whatever the locale says
    rule = sampling.SamplingRule(cfg.temperature, cfg.top_k, cfg.top_p)
    args = (cfg.length, cfg.num_samples, rule, rng, stepper, warm)
    _write_samples(text, sampling.generate_texts(model, vocab, text, *args), cfg.num_samples)


def _write_samples(prompt: str, pieces: Iterator[list[str]], count: int) -> None:
    """Samples are drawn side by side: the first streams to stdout as it grows, the others follow it."""
    out, tty = sys.stdout, sys.stdout.isatty()
    rest: list[list[str]] = [[] for _ in range(count - 1)]
    out.write(prompt)
    for piece, *others in pieces:
        out.write(piece)
        if tty or "\n" in piece:
            out.flush()
        for kept, more in zip(rest, others, strict=True):
            kept.append(more)
    out.write("\n")
    for kept in rest:
        out.write("\n" + "-" * 40 + "\n" + prompt + "".join(kept) + "\n")
    out.flush()


# ----------------------------------------------------------------------------- eval
@app.command(name="eval")
def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint file, or a run directory (meaning its best.pt).")],
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Text file (or known corpus name) to measure. [dim]\\[default: the checkpoint's corpus][/dim]"
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="all, train or val (the checkpoint's --val-fraction tail)."
            " [dim]\\[default: val without --corpus, all with it][/dim]"
        ),
    ] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus file.")] = "utf-8",
    seq_len: Annotated[
        int, typer.Option(help="Characters per evaluation chunk (state is carried across chunks).")
    ] = 256,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: loss, bpc, perplexity, chars.")
    ] = False,
) -> None:
    """Measure loss (nats/char), bits per character and perplexity of a checkpoint on a text."""
    from charlstm import checkpoint as ckpt
    from charlstm import corpus as corpora
    from charlstm import train as training

    payload = ckpt.load_checkpoint(checkpoint)
    tcfg = ckpt.train_config_of(payload)
    split = split or ("all" if corpus else "val")
    if split not in ("all", "train", "val"):
        raise UserError(f"--split {split!r} is not valid, expected one of all, train, val")
    if seq_len <= 0:
        raise UserError(f"--seq-len {seq_len!r} is not valid, expected a whole number greater than 0")
    model, vocab = ckpt.model_from_payload(payload)
    path = corpora.resolve_corpus(corpus or tcfg.corpus)
    tokens = corpora.remap_tokens(corpora.load_corpus(path, encoding if corpus else tcfg.encoding), vocab)
    if split != "all":
        tokens = corpora.split_tokens(tokens, tcfg.val_fraction)[split == "val"]
    if len(tokens) < 2:
        raise UserError(f"the {split} text has {len(tokens)} characters, expected at least 2 to measure")
    result = training.evaluate(model, tokens, seq_len=seq_len)
    report = {"loss": result.loss, "bpc": result.bpc, "perplexity": result.perplexity, "chars": result.chars}
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"charlstm eval: {path} ({split})", show_header=False)
    table.add_row("loss", f"{result.loss:.4f} nats/char")
    table.add_row("bits per char", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    table.add_row("characters", f"{result.chars:,}")
    Console().print(table)


# ----------------------------------------------------------------------------- info
@app.command()
def info(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint file, or a run directory (meaning its best.pt).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what a checkpoint holds: configs, vocabulary, size, progress, where it would resume."""
    from charlstm import checkpoint as ckpt

    payload = ckpt.load_checkpoint(checkpoint)
    report = ckpt.describe(payload)
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"charlstm info: {report['path']}", show_header=False)
    for key in (
        "step",
        "epoch",
        "elapsed",
        "val_loss",
        "last_val_loss",
        "params",
        "vocab_size",
        "precision",
        "format_version",
        "resume",
    ):
        table.add_row(key, _fmt(report.get(key)))
    table.add_row("vocabulary", repr(report["vocab"]))
    for section, values in report["config"].items():
        table.add_row(f"{section} config", ", ".join(f"{k}={v}" for k, v in values.items()))
    Console().print(table)


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint file, or a run directory (meaning its best.pt).")],
    out: Annotated[str, typer.Argument(help="Target .safetensors file.")],
) -> None:
    """Write the weights alone to a .safetensors file (configs and vocabulary as its metadata)."""
    from charlstm import checkpoint as ckpt

    path = ckpt.export_safetensors(ckpt.load_checkpoint(checkpoint), out)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes); sample, eval and info accept it")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
