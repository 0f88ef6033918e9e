"""The ``charlstm`` command: each command declares its options, calls one library function
(``charlstm.api``) and renders what it returns.

This module, ``cli_inspect.py`` (explain, runs, plot), ``cli_app.py`` (the app and its error
path) and ``render.py`` (how it draws: the training view, bars, tables) are the only
ones that import typer or rich or print. User mistakes (``UserError`` and bad
option values) become one ``error: ...`` line on stderr and exit code 2; Ctrl-C exits 130;
anything else is an internal fault: exit 1, with the traceback only under ``--debug``. The
library is imported inside each command, so that ``--help`` and ``--version`` do not wait for
torch.
"""

import json
import signal
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from charlstm.cli import render
from charlstm.cli.app import CheckpointArg, JsonFlag, _Command, app, err
from charlstm.config import EvalConfig, ModelConfig, SampleConfig, TrainConfig
from charlstm.training import presets


def _run_option(help: str, panel: str, default_of: str | None = None, shown: str | None = None) -> Any:  # noqa: A002
    """A training option, None unless given (the library applies the default that the help shows:
    the config field ``default_of``'s, the presets' for a sized option, or the words ``shown``)."""
    if default_of in presets.SIZED:
        shown = presets.default_text(default_of)
    elif default_of is not None:
        config = TrainConfig if default_of in TrainConfig.__dataclass_fields__ else ModelConfig
        shown = config.__dataclass_fields__[default_of].default
    if shown is not None:
        help += f" [dim]\\[default: {shown}][/dim]"
    return typer.Option(help=help, rich_help_panel=panel)


SAMPLE = SampleConfig()  # the defaults `sample --help` shows
DATA, MODEL, OPTIM, BUDGET, OUTPUT, HW = "Data", "Model", "Optimization", "Budget", "Output", "Hardware"


def _read_config(ctx: typer.Context, path: str | None) -> str | None:
    """``--config FILE``, read before every other option: its values become their defaults, so that
    an option given on the command line wins over the file."""
    if path is not None:
        from charlstm.store import configfile

        ctx.default_map = {**(ctx.default_map or {}), **configfile.read_options(path)}
    return path


@app.command(cls=_Command)
def train(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            help="A TOML file of training options (max-time = 120, hidden = 256, ...), such as a run "
            "directory's config.toml; options given here win over it. [dim]\\[default: none][/dim]",
            rich_help_panel=DATA,
            is_eager=True,
            callback=_read_config,
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        _run_option("A text file, a folder of them, a quoted glob, or a known corpus name.", DATA, "corpus"),
    ] = None,
    encoding: Annotated[str | None, _run_option("Text encoding of the corpus file.", DATA, "encoding")] = None,
    skip_bad_files: Annotated[
        bool | None,
        typer.Option(
            "--skip-bad-files",
            help="Leave out the files of a folder or glob that are not text (listed in a warning)."
            " [dim]\\[default: off][/dim]",
            rich_help_panel=DATA,
        ),
    ] = None,
    max_vocab: Annotated[
        int | None, _run_option("Characters with their own token, the commonest first.", DATA, "max_vocab")
    ] = None,
    byte_fallback: Annotated[
        str | None,
        _run_option("Byte tokens for other characters: auto (when some are left out) or on.", DATA, "byte_fallback"),
    ] = None,
    val_fraction: Annotated[
        float | None, _run_option("Contiguous tail of the corpus held out for validation.", DATA, "val_fraction")
    ] = None,
    cell: Annotated[
        str | None, _run_option("Recurrent cell: lstm, gru or peephole (an LSTM whose gates read c).", MODEL, "cell")
    ] = None,
    preset: Annotated[
        str | None,
        _run_option(
            "Model, regularisation and chunk: auto (sized for the budget, corpus and machine speed),"
            " micro, tiny, small or medium. Options you set win.",
            MODEL,
            "preset",
        ),
    ] = None,
    layers: Annotated[int | None, _run_option("Stacked recurrent layers.", MODEL, "layers")] = None,
    hidden: Annotated[int | None, _run_option("Units per layer.", MODEL, "hidden")] = None,
    embedding: Annotated[int | None, _run_option("Character embedding size.", MODEL, "embedding")] = None,
    dropout: Annotated[
        float | None, _run_option("Dropout between layers and before the head, in [0, 1).", MODEL, "dropout")
    ] = None,
    weight_drop: Annotated[
        float | None,
        _run_option(
            "DropConnect on the recurrent weights, the same connections dropped at every step of a chunk, in [0, 1).",
            MODEL,
            "weight_drop",
        ),
    ] = None,
    embed_dropout: Annotated[
        float | None,
        _run_option("Drop whole characters' embeddings, a new choice each chunk, in [0, 1).", MODEL, "embed_dropout"),
    ] = None,
    seq_len: Annotated[
        int | None,
        _run_option(
            "Characters per chunk of truncated backpropagation through time"
            f" (auto keeps {TrainConfig.seq_len} under --max-steps).",
            OPTIM,
            "seq_len",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        _run_option(
            f"Parallel contiguous streams per batch (auto keeps {TrainConfig.batch_size} under --max-steps).",
            OPTIM,
            "batch_size",
        ),
    ] = None,
    lr: Annotated[float | None, _run_option("Peak learning rate of AdamW.", OPTIM, "lr")] = None,
    weight_decay: Annotated[
        float | None, _run_option("AdamW weight decay on weight matrices.", OPTIM, "weight_decay")
    ] = None,
    grad_clip: Annotated[
        float | None, _run_option("Clip the global gradient norm to this (0: off).", OPTIM, "grad_clip")
    ] = None,
    schedule: Annotated[
        str | None, _run_option("Learning-rate schedule: cosine, step, plateau or constant.", OPTIM, "schedule")
    ] = None,
    warmup_steps: Annotated[
        int | None, _run_option("Steps of linear learning-rate warm-up.", OPTIM, "warmup_steps")
    ] = None,
    min_lr_ratio: Annotated[
        float | None, _run_option("Floor of the cosine/plateau schedule, as a fraction of --lr.", OPTIM, "min_lr_ratio")
    ] = None,
    max_steps: Annotated[int | None, _run_option("Stop after this many optimizer steps.", BUDGET, shown="none")] = None,
    epochs: Annotated[
        float | None,
        _run_option("Stop after this many passes over the training split (10 when no budget is given).", BUDGET),
    ] = None,
    max_time: Annotated[
        float | None,
        _run_option("Stop after this many seconds; the schedule anneals over this budget.", BUDGET, shown="none"),
    ] = None,
    out: Annotated[
        str | None,
        _run_option(
            "Run directory for best.pt, last.pt and metrics.jsonl. [dim]\\[default: checkpoints/<corpus name>][/dim]",
            OUTPUT,
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        _run_option(
            f"Evaluate and save every N steps (auto keeps {TrainConfig.eval_every} under --max-steps).",
            OUTPUT,
            "eval_every",
        ),
    ] = None,
    eval_chars: Annotated[
        int | None, _run_option("Tokens of the validation split each evaluation reads.", OUTPUT, "eval_chars")
    ] = None,
    save_every: Annotated[
        int | None,
        _run_option(
            f"Write last.pt every N steps (auto keeps {TrainConfig.save_every} under --max-steps).",
            OUTPUT,
            "save_every",
        ),
    ] = None,
    log_every: Annotated[
        int | None, _run_option("Report training loss and speed every N steps.", OUTPUT, "log_every")
    ] = None,
    sample_chars: Annotated[
        int | None, _run_option("Characters of sample shown at each evaluation (0: none).", OUTPUT, "sample_chars")
    ] = None,
    resume: Annotated[
        str | None,
        _run_option(
            "Continue the run in this directory (or from this last.pt) exactly where it stopped."
            " [dim]\\[default: none][/dim]",
            OUTPUT,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite/--no-overwrite",
            help="Start afresh in a run directory that already holds a run.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    seed: Annotated[int | None, _run_option("Random seed: the same seed repeats a CPU run.", HW, "seed")] = None,
    device: Annotated[str | None, _run_option("auto, cpu, cuda or mps.", HW, "device")] = None,
    precision: Annotated[
        str | None, _run_option("auto (measured: the faster of the two), fp32 or bf16.", HW, "precision")
    ] = None,
) -> None:
    """Train a model; progress is shown live, checkpoints go to the run directory."""
    from charlstm import api

    given = {name: value for name, value in ctx.params.items() if value is not None and name != "config"}
    options = {**(ctx.default_map or {}), **given}  # and options of the file that this command does not declare
    with render.TrainView(err) as view:
        result = api.train(**options, on_event=view.on_event, on_reading=view.reading)
    if result.stopped_by == "signal":  # the view has shown the resume command
        raise typer.Exit(130 if result.signal == signal.SIGINT else 143)


@app.command(cls=_Command)
def sample(
    checkpoint: CheckpointArg,
    prompt: Annotated[str, typer.Option(help="Text the model continues (printed first).")] = SAMPLE.prompt,
    length: Annotated[
        int, typer.Option(help="Tokens to generate per sample (characters, unless some are byte tokens).")
    ] = SAMPLE.length,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature; 0 means greedy (always the likeliest).")
    ] = SAMPLE.temperature,
    top_k: Annotated[int | None, typer.Option(help="Sample only among the k likeliest characters.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Sample only within the smallest set of probability >= p.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same text. [dim]\\[default: random][/dim]")
    ] = None,
    num_samples: Annotated[int, typer.Option(help="How many samples to draw.")] = SAMPLE.num_samples,
    unknown: Annotated[
        str, typer.Option(help="Prompt characters the model never saw: error, or skip them with a warning.")
    ] = SAMPLE.unknown,
    precision: Annotated[
        str,
        typer.Option(
            help="Weights the sampling step reads: fp32 (exact), bf16 (half the bytes to read: up to twice as "
            "fast), or auto (the precision the model trained in)."
        ),
    ] = SAMPLE.precision,
) -> None:
    """Generate text from a trained model; characters stream to stdout as they are made."""
    from charlstm import api

    cfg = SampleConfig(prompt, length, temperature, top_k, top_p, seed, num_samples, unknown, precision)
    samples = api.sample(checkpoint, cfg)
    if samples.dropped:
        err.print(f"warning: dropped prompt characters the model never saw: {', '.join(map(repr, samples.dropped))}")
    if cfg.seed is None:  # shown first, so that even an interrupted sample can be repeated
        err.print(f"[dim]seed {samples.seed} (pass --seed {samples.seed} to repeat this text)[/dim]")
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # generated text is UTF-8 whatever the locale says
    render.write_samples(sys.stdout, samples.prompt, samples.pieces, cfg.num_samples)


@app.command(name="eval", cls=_Command)
def evaluate(
    checkpoint: CheckpointArg,
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
    encoding: Annotated[
        str | None,
        typer.Option(
            help="Text encoding of the text. [dim]\\[default: the checkpoint's without --corpus, utf-8 with it][/dim]"
        ),
    ] = None,
    seq_len: Annotated[
        int, typer.Option(help="Characters per evaluation chunk (state is carried across chunks).")
    ] = EvalConfig.seq_len,
    unknown: Annotated[
        str,
        typer.Option(help="Characters a model without byte tokens cannot read: error, or skip them (counted)."),
    ] = EvalConfig.unknown,
    max_chars: Annotated[
        int | None,
        typer.Option(help="Measure this many tokens, spread over the text. [dim]\\[default: all][/dim]"),
    ] = None,
    skip_bad_files: Annotated[
        bool, typer.Option("--skip-bad-files", help="Leave out the files of a folder that are not text.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Measure loss (nats/char), bits per character and perplexity of a checkpoint on a text."""
    from charlstm import api

    config = EvalConfig(corpus, split, encoding, seq_len, unknown, skip_bad_files, max_chars)
    with render.ProgressBar(err, "eval") as bar:
        report = api.evaluate_checkpoint(checkpoint, config, on_progress=bar.update)
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
    out: Annotated[str, typer.Argument(help="Target .safetensors file.")],
) -> None:
    """Write the weights alone to a .safetensors file (configs and vocabulary as its metadata)."""
    from charlstm import api

    path = api.export(checkpoint, out)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes); sample, eval and info accept it")


from charlstm.cli import insight as cli_inspect  # noqa: E402, F401 - registers explain, runs and plot after the commands above (help's order)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
