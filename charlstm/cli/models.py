"""The commands that use a trained model: ``sample``, ``eval``, ``info`` and ``export``. Each
declares its options, calls one library function (``charlstm.api``) and renders what it returns;
the library is imported inside each command, so that ``--help`` does not wait for torch."""

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from charlstm.cli import render
from charlstm.cli.app import CheckpointArg, JsonFlag, _Command, app, err
from charlstm.cli.options import declares, with_default
from charlstm.config import EvalConfig, SampleConfig
from charlstm.options import declared
from charlstm.training import words
from charlstm.training.events import Compiling


@app.command(cls=_Command)
@declares(with_default(d) for d in declared(SampleConfig))
def sample(checkpoint: CheckpointArg, **options: Any) -> None:
    """Generate text from a trained model; characters stream to stdout as they are made."""
    from charlstm import api

    cfg = SampleConfig(**options)
    with render.Waiting(err, words.compiling(Compiling())) as waiting:
        api.prepare_sampling(on_slow=waiting.start)
    samples = api.sample(checkpoint, cfg)
    if samples.dropped:
        err.print(f"warning: dropped prompt characters the model never saw: {', '.join(map(repr, samples.dropped))}")
    if cfg.seed is None and samples.seeded:  # shown first, so that even an interrupted sample can be repeated
        err.print(f"[dim]seed {samples.seed} (pass --seed {samples.seed} to repeat this text)[/dim]")
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # generated text is UTF-8 whatever the locale says
    if cfg.logprobs is not None:
        render.write_scored(sys.stdout, samples)
    else:
        render.write_samples(sys.stdout, samples.prompt, samples.pieces, cfg.num_samples)


@app.command(name="eval", cls=_Command)
@declares((with_default(d) for d in declared(EvalConfig)), after=("as_json",))
def evaluate(checkpoint: CheckpointArg, *, as_json: JsonFlag = False, **options: Any) -> None:
    """Measure loss (nats/char), bits per character and perplexity of a checkpoint on a text."""
    from charlstm import api

    config = EvalConfig(**options)
    with render.ProgressBar(err, "eval") as bar, render.ProgressBar(err, "dynamic evaluation") as dynamic:
        report = api.evaluate_checkpoint(checkpoint, config, on_progress=bar.update, on_dynamic=dynamic.update)
    if report.dropped_chars:
        err.print(f"warning: left out {report.dropped_chars:,} characters the model cannot read (--unknown skip)")
    if as_json:
        typer.echo(json.dumps(report.result.to_dict()))
        return
    Console().print(render.eval_table(report))


@app.command(cls=_Command)
def info(checkpoint: CheckpointArg, as_json: JsonFlag = False) -> None:
    """Show what a checkpoint holds: configs, vocabulary, size, progress, where it would resume."""
    from charlstm import api

    report = api.describe(checkpoint)
    if as_json:
        typer.echo(json.dumps(report))
        return
    Console().print(render.info_table(report))


@app.command(cls=_Command)
def export(
    checkpoint: CheckpointArg,
    out: Annotated[
        str,
        typer.Argument(
            help="Target file, its format named by its suffix: .safetensors (the weights), .onnx (a step graph "
            "for onnxruntime) or .html (one page that generates offline). Its folder is made if missing."
        ),
    ],
    format: Annotated[  # noqa: A002 - the option's name
        str | None,
        typer.Option(
            "--format",
            help="safetensors, onnx or html, for an OUT whose suffix names none (.safetensors needs its suffix).",
            show_default="by suffix",
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision", help="The page's weights: fp32, or bf16 (half the size; as sample --precision bf16)."
        ),
    ] = "fp32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it already exists.")] = False,
) -> None:
    """Write the model in another format: safetensors, ONNX (checked with onnxruntime) or one HTML page."""
    from charlstm import api

    done = api.export(checkpoint, out, format, precision, overwrite)
    err.print(render.exported(done), soft_wrap=True)  # one line, whatever the width: a path may be long
