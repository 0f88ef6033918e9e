import dataclasses
import json
import os

import pytest
import torch
from conftest import RunsCodeWhenUnpickled, full_disk
from fixtures import expected_logits as fixture_logits

import charlstm
from charlstm.config import ModelConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.store import checkpoint as ckpt
from charlstm.store.checkpoint import Checkpoint, RunState, load_checkpoint
from charlstm.store.migrations import MIGRATIONS
from charlstm.training.loop import train
from charlstm.training.resume import resume_run


def tiny_checkpoint() -> Checkpoint:
    vocab = CharVocab("abcdef\n")
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=4, hidden=8, layers=2))
    return Checkpoint(model.config, vocab, model.state_dict())


@pytest.fixture
def saved(tmp_path):
    checkpoint = tiny_checkpoint()
    path = tmp_path / "best.pt"
    checkpoint.save(path)
    return path, checkpoint


def test_round_trip_writes_exactly_the_listed_keys(saved):
    path, original = saved
    raw = torch.load(path, weights_only=True)
    assert tuple(raw) == Checkpoint.KEYS and raw["format_version"] == ckpt.FORMAT_VERSION == 5
    loaded = load_checkpoint(path)
    assert loaded.vocab == original.vocab and loaded.model_config == original.model_config
    assert loaded.path == path and loaded.file_version == ckpt.FORMAT_VERSION and not loaded.resumable
    model = loaded.build_model()
    assert not model.training
    for k, v in original.model.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_run_directory_means_best_then_last(saved, tmp_path):
    path, _ = saved
    assert ckpt.find_checkpoint(tmp_path) == path
    os.replace(path, tmp_path / "last.pt")
    assert ckpt.find_checkpoint(tmp_path) == tmp_path / "last.pt"
    with pytest.raises(UserError, match="holds no best.pt"):
        ckpt.find_checkpoint(tmp_path / "..")
    with pytest.raises(UserError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "nowhere.pt")


def test_truncated_and_garbage_files(saved, tmp_path):
    path, _ = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(UserError, match="not a readable charlstm checkpoint"):
            load_checkpoint(bad)


def test_not_a_checkpoint_and_newer_versions(tmp_path, saved):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not a charlstm checkpoint"):
        load_checkpoint(other)
    _, checkpoint = saved
    future = tmp_path / "future.pt"
    torch.save({**checkpoint.to_dict(), "format_version": 99}, future)
    with pytest.raises(UserError, match="format version 99, expected 5 or older.*upgrade charlstm"):
        load_checkpoint(future)
    damaged = tmp_path / "damaged.pt"
    torch.save({**checkpoint.to_dict(), "model_config": {"hidden": -3}}, damaged)
    with pytest.raises(UserError, match="damaged charlstm checkpoint.*--hidden -3"):
        load_checkpoint(damaged)


def test_pickled_objects_are_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": RunsCodeWhenUnpickled()}, evil)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED").exists()


def test_save_is_atomic_when_the_write_fails(saved, monkeypatch):
    path, checkpoint = saved
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]


def test_run_state_tolerates_fields_added_or_dropped(run_copy, monkeypatch):
    """A checkpoint written now still loads, and resumes, after RunState gains a field; a field
    the file has and the code no longer knows is ignored."""
    grown = dataclasses.make_dataclass(
        "RunState", [("tokens_seen", int, dataclasses.field(default=7))], bases=(RunState,)
    )
    monkeypatch.setattr(ckpt, "RunState", grown)
    loaded = load_checkpoint(run_copy / "last.pt")
    assert loaded.progress.step == 40 and loaded.progress.tokens_seen == 7
    run = resume_run(run_copy, {"max_steps": 44})
    assert train(run).step == 44 and load_checkpoint(run_copy / "last.pt").progress.tokens_seen == 7
    raw = torch.load(run_copy / "last.pt", weights_only=True)
    raw["progress"]["retired_field"] = "gone"
    torch.save(raw, run_copy / "last.pt")
    monkeypatch.setattr(ckpt, "RunState", RunState)
    assert load_checkpoint(run_copy / "last.pt").progress.step == 44


# Logits of the old fixtures are compared within this: fp32 rounding differs between CPUs by about
# 1e-6 here, and a change to how a checkpoint is read moves them by far more.
LOGITS_ATOL = 1e-4
DECIDED_MARGIN = 1e-3  # a greedy character counts where its logit leads the next by this much


def _decided_chars(logits: torch.Tensor, prompt_chars: int) -> int:
    """Characters of a greedy text (prompt included) that no CPU's rounding can change: the prompt,
    and the generated characters up to the first whose two largest logits lie within the margin."""
    close = fixture_logits.margins(logits)[prompt_chars:-1] < DECIDED_MARGIN  # row i predicts character i
    return prompt_chars + (int(close.nonzero()[0, 0]) if close.any() else len(close))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_older_run_loads_samples_evaluates_and_resumes(old_folder, version):
    """Each fixture was written by the last charlstm to write its format; see tests/fixtures/vN/README.md."""
    old = load_checkpoint(f"v{version}_run/last.pt")
    assert old.file_version == version and old.resumable and old.model_config.hidden == 16
    assert old.corpus["sha256"].startswith("67528c7d") and old.progress.step == 8
    records = [json.loads(line) for line in (old_folder / f"v{version}_run" / "metrics.jsonl").read_text().splitlines()]
    ended = records[-1]["type"] == "end"  # format 1's charlstm wrote no end records
    assert old.progress.metrics_lines == len(records) - ended  # the end record is written after the last save
    assert old.progress.chunks_per_epoch == 168 and old.progress.passes == pytest.approx(8 / 168)
    model = charlstm.load(f"v{version}_run/last.pt")
    expected = torch.load(f"v{version}_logits.pt", weights_only=True)  # see tests/fixtures/expected_logits.py
    sample, _ = fixture_logits.printed_samples(old_folder, version)
    torch.testing.assert_close(fixture_logits.logits_over(old, sample), expected["sample"], atol=LOGITS_ATOL, rtol=0)
    greedy = model.generate(fixture_logits.PROMPT, length=fixture_logits.LENGTH, temperature=0)
    over_greedy = fixture_logits.logits_over(old, expected["greedy_text"])
    torch.testing.assert_close(over_greedy, expected["greedy"], atol=LOGITS_ATOL, rtol=0)
    decided = _decided_chars(expected["greedy"], len(fixture_logits.PROMPT))
    assert decided >= 10 and greedy[:decided] == expected["greedy_text"][:decided], (greedy, expected["greedy_text"])
    assert model.evaluate("KING:\nThe lord.\n").chars == len("KING:\nThe lord.\n") - 1
    assert charlstm.api.describe(f"v{version}_run/last.pt")["format_version"] == version
    result = train(resume_run(f"v{version}_run", {"max_steps": 12}))
    resumed = load_checkpoint(f"v{version}_run/last.pt")
    assert result.step == 12 and resumed.file_version == ckpt.FORMAT_VERSION
    lines = [json.loads(line) for line in (old_folder / f"v{version}_run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["type"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert resumed.progress.metrics_lines == len(lines) - 1 and resumed.progress.passes == pytest.approx(12 / 168)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_older_export_loads_and_samples_as_before(old_folder, version):
    model = charlstm.load(f"v{version}_export.safetensors")
    assert model.checkpoint.file_version == version and model.checkpoint.optimizer is None
    expected = torch.load(f"v{version}_logits.pt", weights_only=True)["export"]
    _, printed = fixture_logits.printed_samples(old_folder, version)
    assert len(printed) == len(expected) == 3
    for text, logits in zip(printed, expected, strict=True):
        torch.testing.assert_close(fixture_logits.logits_over(model.checkpoint, text), logits, atol=LOGITS_ATOL, rtol=0)
    texts = model.generate_many("", n=3, length=60, seed=5)
    assert all(len(text) == 60 and set(text) <= set(model.vocab.chars) for text in texts)
    if version > 1:  # format 1 kept no epoch in its exports
        assert model.checkpoint.describe()["epoch"] == pytest.approx(8 / 168, abs=1e-6)


def test_version_3_keeps_a_count_of_its_log_and_the_size_of_a_pass_in_format_4():
    v3 = {"format_version": 3, "epoch": 2.25, "progress": {"epoch": 2, "chunk": 10, "metrics": [{}, {}, {}]}}
    v4 = MIGRATIONS[3](v3)
    assert v4 == {
        "format_version": 4,
        "progress": {"epoch": 2, "chunk": 10, "chunks_per_epoch": 40, "metrics_lines": 3},
    }
    worded = {"format_version": 3, "progress": {"sizing": {"preset": "small", "budget": "the default 10 epochs"}}}
    assert MIGRATIONS[3](worded)["progress"]["sizing"] == {"preset": "small", "default_budget": True}
    at_a_pass = MIGRATIONS[3]({"format_version": 3, "epoch": 1.0, "progress": {"epoch": 1, "chunk": 0}})
    assert ckpt.RunState.from_dict(at_a_pass["progress"]).passes == 1.0


def test_export_round_trip(shared_run, tmp_path):
    out = ckpt.export_safetensors(load_checkpoint(shared_run), tmp_path / "m.safetensors")
    exported, original = load_checkpoint(out), load_checkpoint(shared_run)
    assert exported.optimizer is None and exported.file_version == ckpt.FORMAT_VERSION
    assert exported.corpus == original.corpus
    assert exported.progress.best_val_loss == original.progress.best_val_loss
    assert all(torch.equal(exported.model[k], v) for k, v in original.model.items())
    assert all(torch.equal(a, b) for a, b in zip(exported.warm_state(), original.warm_state(), strict=True))
    with pytest.raises(UserError, match=".safetensors"):
        ckpt.export_safetensors(original, tmp_path / "m.bin")
    other = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(UserError, match="not a charlstm export"):
        load_checkpoint(other)


def test_describe(shared_run):
    report = load_checkpoint(shared_run).describe()
    assert report["step"] == 40 and report["format_version"] == 5 and report["val_loss"] > 0
    assert report["resume"] == f"charlstm train --resume {shared_run}"
    assert report["params"] == sum(t.numel() for t in load_checkpoint(shared_run).model.values())
    json.dumps(report)  # JSON-ready


def test_version_2_models_trained_without_the_dropouts_format_3_added():
    v2 = {"format_version": 2, "model_config": {"hidden": 32, "dropout": 0.1}}
    v3 = MIGRATIONS[2](v2)
    assert v3["format_version"] == 3
    assert v3["model_config"] == {"hidden": 32, "dropout": 0.1, "weight_drop": 0.0, "embed_dropout": 0.0}
    assert ModelConfig.from_dict(v3["model_config"]).weight_drop == 0 < ModelConfig().weight_drop


def test_version_1_migration_moves_metrics_and_the_corpus_hash():
    progress = {"step": 3, "corpus_sha256": "ab" * 32, "loss_sum": 3.0, "loss_count": 2}
    v1 = {"format_version": 1, "progress": progress, "metrics": [{"step": 3}], "vocab": "abc"}
    v2 = MIGRATIONS[1]({**v1, "device_type": "cpu", "model": {}, "train_config": {"batch_size": 2, "seq_len": 5}})
    assert v2["format_version"] == 2 and v2["corpus"] == {"sha256": "ab" * 32} and "device_type" not in v2
    assert v2["progress"] == {"step": 3, "metrics": [{"step": 3}], "loss_sum": 30.0, "loss_count": 20}
    assert "metrics" not in v2 and v2["train_config"]["max_vocab"] == 3  # every character had its own token
    with_corpus = MIGRATIONS[1]({**v1, "corpus": {"path": "t.txt", "sha256": "cd" * 32, "chars": 9}})
    assert with_corpus["corpus"]["path"] == "t.txt"  # a checkpoint's own record wins


def test_exports_keep_unknown_metadata_apart_and_refuse_damaged_metadata(shared_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = ckpt.export_safetensors(load_checkpoint(shared_run), tmp_path / "m.safetensors")
    with safe_open(str(out), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "tagged.safetensors"), metadata={**meta, "exported_by": "another tool"})
    assert load_checkpoint(tmp_path / "tagged.safetensors").progress.step == 40
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "model_config": "{not json"})
    with pytest.raises(UserError, match="damaged charlstm metadata"):
        load_checkpoint(tmp_path / "bad.safetensors")
