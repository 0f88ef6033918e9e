import json
from dataclasses import replace
from pathlib import Path

import pytest

from charlstm.config import TrainConfig
from charlstm.data.sources import resolve_corpus
from charlstm.errors import UserError
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.loop import train
from charlstm.training.resume import resume_run
from charlstm.training.run import default_run_dir, new_run


def test_new_run_fills_in_the_vocabulary_and_run_directory(tiny_train, tiny_model):
    run = new_run(tiny_train, tiny_model)
    assert run.mcfg.vocab_size == len(run.data.corpus.vocab) and run.tcfg.out == tiny_train.out
    assert run.run_dir.is_dir() and run.state.step == 0 and run.state.precision == "fp32"
    assert default_run_dir(resolve_corpus(tiny_train.corpus)) == Path("checkpoints/play")
    assert default_run_dir(resolve_corpus(str(Path(tiny_train.corpus).parent))).parent == Path("checkpoints")


def test_existing_run_is_not_overwritten(tiny_train, tiny_model):
    train(new_run(replace(tiny_train, max_steps=2), tiny_model))
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        new_run(tiny_train, tiny_model)
    run = new_run(replace(tiny_train, max_steps=2), tiny_model, overwrite=True)
    assert run.state.step == 0 and not (Path(tiny_train.out) / "best.pt").exists()


def test_resume_restores_the_run_and_rewrites_metrics(run_copy):
    lines = (run_copy / "metrics.jsonl").read_text()
    (run_copy / "metrics.jsonl").write_text(lines + '{"type": "train", "step": 99}\n')  # written after last.pt
    (run_copy / ".last.pt.x1y2.tmp").write_bytes(b"torn")
    run = resume_run(run_copy, {"max_steps": 50})
    assert run.state.step == 40 and run.tcfg.max_steps == 50 and run.hidden is not None
    assert run.run_dir == run_copy and run.tcfg.out == str(run_copy)
    assert (run_copy / "metrics.jsonl").read_text() == lines
    assert not list(run_copy.glob(".*.tmp"))


def test_resume_refuses_changes_to_architecture_optimiser_and_data(run_copy):
    with pytest.raises(UserError, match="--hidden 64 differs from the run's 16"):
        resume_run(run_copy, {"hidden": 64})
    with pytest.raises(UserError, match="--lr 0.5 differs"):
        resume_run(run_copy, {"lr": 0.5})
    assert resume_run(run_copy, {"max_steps": 44, "hidden": 16, "log_every": 3}).tcfg.log_every == 3


def test_resume_refuses_a_changed_corpus(run_copy, tmp_path):
    checkpoint = load_checkpoint(run_copy / "last.pt")
    edited = tmp_path / "edited.txt"
    edited.write_text(Path(checkpoint.train_config.corpus).read_text(encoding="utf-8") + "more", encoding="utf-8")
    checkpoint.train_config = replace(checkpoint.train_config, corpus=str(edited))
    checkpoint.save(run_copy / "last.pt")
    with pytest.raises(UserError, match="has changed since the run started"):
        resume_run(run_copy, {})


def test_finished_run_and_non_resumable_files_are_refused(run_copy):
    with pytest.raises(UserError, match="already finished at step 40.*--max-steps"):
        train(resume_run(run_copy, {}))
    with pytest.raises(UserError, match="cannot be resumed"):
        resume_run(run_copy / "best.pt", {})


def test_too_short_corpus_is_explained(tmp_path, tiny_model):
    path = tmp_path / "short.txt"
    path.write_text("hello world\n" * 20, encoding="utf-8")
    with pytest.raises(UserError, match="too short for one batch"):
        new_run(TrainConfig(corpus=str(path), out=str(tmp_path / "r")), tiny_model)


def test_a_checkpoint_without_a_corpus_hash_is_not_resumed(run_copy):
    checkpoint = load_checkpoint(run_copy / "last.pt")
    checkpoint.corpus = None
    checkpoint.save(run_copy / "last.pt")
    with pytest.raises(UserError, match="records no corpus hash"):
        resume_run(run_copy, {})


def test_resume_keeps_the_end_record_of_a_run_stopped_at_its_checkpoint(run_copy):
    log = run_copy / "metrics.jsonl"
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "end" and json.loads(lines[-1])["step"] == 40
    with pytest.raises(UserError, match="already finished"):  # a resume refused leaves the run as it ended
        train(resume_run(run_copy, {}))
    assert log.read_text().splitlines() == lines
    run = resume_run(run_copy, {"max_steps": 44})
    assert run.state.metrics_lines == len(lines)  # the end record is history now, counted in the next checkpoint
    train(run)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["type"] for r in records].count("end") == 2 and records[-1]["step"] == 44
    assert load_checkpoint(run_copy / "last.pt").progress.metrics_lines == len(records) - 1


def test_resume_drops_an_end_record_written_after_its_checkpoint(run_copy):
    log = run_copy / "metrics.jsonl"
    lines = log.read_text().splitlines()[:-1]  # as of last.pt, step 40
    failed = {"type": "end", "step": 43, "elapsed": 9.0, "stopped_by": "error", "signal": None, "error": "disk full"}
    log.write_text("\n".join([*lines, json.dumps({"type": "train", "step": 42}), json.dumps(failed)]) + "\n")
    resume_run(run_copy, {"max_steps": 50})
    assert log.read_text().splitlines() == lines


def test_every_run_directory_has_its_settings_as_config_toml(tiny_train, tiny_model, run_copy, tmp_path):
    from charlstm.store.configfile import read_options

    run = new_run(replace(tiny_train, precision="auto", max_steps=3, out=str(tmp_path / "fresh")), tiny_model)
    written = read_options(run.run_dir / "config.toml")
    assert written["precision"] == run.state.precision != "auto"  # as measured: a repeat runs as this did
    expected = {**run.tcfg.to_dict(), **run.mcfg.to_dict(), "precision": run.state.precision}
    assert written == {k: v for k, v in expected.items() if v is not None and k != "vocab_size"}
    resume_run(run_copy, {"max_steps": 60})
    assert read_options(run_copy / "config.toml")["max_steps"] == 60  # the settings it now runs with
