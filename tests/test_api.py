"""The Python API: README's example as written, and each method against the command line."""

import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import play_text, tiny_train_config
from typer.testing import CliRunner

import charlstm
from charlstm import api
from charlstm.cli.models import app
from charlstm.config import ModelConfig
from charlstm.training import loop as training
from charlstm.training.run import new_run

README = Path(__file__).parent.parent / "README.md"
runner = CliRunner()


def readme_python_example() -> str:
    """The first ```python block of README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    speakers = ["ROMEO", "JULIET", "KING"]
    Path("play.txt").write_text(play_text(20_000, speakers=speakers), encoding="utf-8")
    tcfg = tiny_train_config("play.txt", "checkpoints/tinyshakespeare", max_steps=30, eval_every=10)
    training.train(new_run(tcfg, ModelConfig(embedding=8, hidden=16, layers=2)))
    Path("some.txt").write_text(play_text(3_000, seed=1, speakers=speakers), encoding="utf-8")
    Path("my.txt").write_text(play_text(30_000, seed=2), encoding="utf-8")
    names: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), names)  # noqa: S102 - the README's own code
    out = capsys.readouterr()
    assert names["text"].startswith("ROMEO:") and len(names["text"]) == len("ROMEO:") + 300
    assert "JULIET:" in out.out and len(names["texts"]) == 8 and all(t.startswith("KING:") for t in names["texts"])
    assert names["score"].chars == len(Path("some.txt").read_text()) - 1 and 0 < names["score"].bpc < 6
    assert names["result"].stopped_by == "max_time" and Path("runs/mine/best.pt").is_file()
    assert "train:" in out.err  # the tqdm bar


def test_generate_returns_the_command_lines_text(shared_run):
    model = charlstm.load(shared_run)
    cli = runner.invoke(app, ["sample", str(shared_run), "--prompt", "KING:", "--length", "80", "--seed", "7"])
    assert cli.exit_code == 0 and cli.stdout == model.generate("KING:", length=80, seed=7) + "\n"
    pieces = list(model.stream("KING:", length=80, seed=7, top_k=5))
    assert pieces[0] == "KING:" and "".join(pieces) == model.generate("KING:", length=80, seed=7, top_k=5)
    many = runner.invoke(app, ["sample", str(shared_run), "--length", "50", "--num-samples", "3", "--seed", "2"])
    texts = model.generate_many("", n=3, length=50, seed=2)
    assert many.stdout == ("\n\n" + "-" * 40 + "\n").join(texts) + "\n" and len(set(texts)) == 3


def test_model_properties_and_evaluation(shared_run, tmp_path):
    model = charlstm.load(shared_run)
    assert model.config.hidden == 16 and model.num_params == model.module.num_params() > 0
    assert "\n" in model.vocab.chars and "2x16" in repr(model)
    text = "KING:\nThe king is my lord.\n" * 3
    score = model.evaluate(text)
    assert score.chars == len(text) - 1 and score.bpc == pytest.approx(score.loss / 0.6931471805599453)
    cli = runner.invoke(app, ["export", str(shared_run), str(tmp_path / "m.safetensors")])
    exported = charlstm.load(tmp_path / "m.safetensors")
    assert cli.exit_code == 0 and exported.generate("K", length=40, seed=1) == model.generate("K", length=40, seed=1)


def test_user_mistakes_raise_user_error_with_the_cli_message(shared_run, tmp_path):
    model = charlstm.load(shared_run)
    assert issubclass(charlstm.UserError, ValueError)
    with pytest.raises(charlstm.UserError, match="--prompt has characters the model never saw: '☃'"):
        model.generate("☃")
    with pytest.raises(charlstm.UserError, match="--temperature -1"):
        model.generate("K", temperature=-1)
    with pytest.raises(charlstm.UserError, match="unknown sampling option 'temp'; did you mean 'temperature'"):
        model.generate_many("K", n=2, temp=0.5)
    with pytest.raises(charlstm.UserError, match="the text has characters the model never saw: 'Ω'"):
        model.evaluate("KING Ω")
    with pytest.raises(charlstm.UserError, match="at least 2"):
        model.evaluate("K")
    with pytest.raises(charlstm.UserError, match="unknown training option 'hiden'; did you mean 'hidden'"):
        charlstm.train(corpus="x.txt", hiden=64)
    with pytest.raises(charlstm.UserError, match="does not exist"):
        charlstm.load(tmp_path / "nothing.pt")


def test_train_and_resume_through_the_api(tmp_path, corpus_file):
    tiny = dict(hidden=16, embedding=8, seq_len=16, batch_size=4, precision="fp32", sample_chars=0, eval_every=5)
    first = charlstm.train(str(corpus_file), out=str(tmp_path / "run"), max_steps=5, **tiny)
    assert first.step == 5 and first.stopped_by == "max_steps"
    more = charlstm.train(resume=tmp_path / "run", max_steps=8)
    assert more.step == 8 and charlstm.load(tmp_path / "run").checkpoint.progress.step == 8
    with pytest.raises(charlstm.UserError, match="--hidden 32 differs"):
        charlstm.train(resume=tmp_path / "run", max_steps=9, hidden=32)


def test_training_outside_the_main_thread(tmp_path, corpus_file):
    """Signal handlers can only be set in the main thread: elsewhere training runs without them."""
    results = []
    options = dict(hidden=16, embedding=8, seq_len=16, batch_size=4, precision="fp32", max_steps=3, sample_chars=0)
    worker = threading.Thread(target=lambda: results.append(api.train(str(corpus_file), out=str(tmp_path), **options)))
    worker.start()
    worker.join(120)
    assert results and results[0].step == 3


def test_nan_loss_raises_after_saving(run_copy, monkeypatch):
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", poisoned_step(real_step))
    best = (run_copy / "best.pt").read_bytes()
    with pytest.raises(charlstm.UserError, match="NaN or infinite by step 44.*--lr"):
        charlstm.train(resume=run_copy, max_steps=60)
    assert (run_copy / "best.pt").read_bytes() == best
    assert charlstm.load(run_copy / "last.pt").checkpoint.progress.step == 40


def test_paths_are_accepted_wherever_a_file_is_named(tmp_path, corpus_file):
    tiny = dict(hidden=16, embedding=8, seq_len=16, batch_size=4, precision="fp32", sample_chars=0)
    result = charlstm.train(corpus_file, out=tmp_path / "run", max_steps=2, **tiny)
    checkpoint = charlstm.load(tmp_path / "run").checkpoint
    assert result.step == 2 and checkpoint.train_config.corpus == str(corpus_file)
    assert charlstm.train(resume=tmp_path / "run", corpus=corpus_file, max_steps=3).step == 3


def test_the_progress_bar_reports_evaluations_and_ends_full(tmp_path, corpus_file, capsys):
    tiny = dict(hidden=16, embedding=8, seq_len=16, batch_size=4, precision="fp32", sample_chars=0, eval_every=4)
    charlstm.train(corpus_file, out=tmp_path / "run", max_steps=8, log_every=3, progress=True, **tiny)
    shown = capsys.readouterr()  # tqdm.write puts lines on stdout, the bar goes to stderr
    assert "step 4: val loss" in shown.out and "step 8: val loss" in shown.out and "on cpu (fp32)" in shown.out
    assert shown.err.replace("\r", "\n").strip().splitlines()[-1].startswith("train: 100%")


def test_options_are_checked_when_called(shared_run):
    model = charlstm.load(shared_run)
    with pytest.raises(charlstm.UserError, match="--top-p 2"):
        model.stream("K", top_p=2)  # before the first piece is asked for
    if not torch.cuda.is_available():
        with pytest.raises(charlstm.UserError, match="--device cuda"):
            charlstm.load(shared_run, device="cuda")


def poisoned_step(real_step):
    """A training step whose loss comes out NaN."""

    def step(learner, x, y, state, lr, *frozen):
        loss, state = real_step(learner, x, y, state, lr, *frozen)
        return loss * float("nan"), state

    return step
