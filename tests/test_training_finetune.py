"""Fine-tuning (--init-from): a new run that starts from a trained base, its vocabulary grown by
the new corpus's characters, its lineage recorded; the base is only ever read."""

import hashlib
import json
import math
import re
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunsCodeWhenUnpickled, play_text, tiny_train_config
from test_cli import TINY, assert_user_error, invoke, runner

import charlstm
from charlstm import api
from charlstm.cli.models import app
from charlstm.config import ModelConfig
from charlstm.data.corpus import Reading, load_in_vocab
from charlstm.data.sources import resolve_corpus
from charlstm.data.vocab import CharVocab
from charlstm.store.checkpoint import Lineage, load_checkpoint
from charlstm.training import finetune, words
from charlstm.training.evaluate import evaluate
from charlstm.training.events import FAR_TEXT, NEAR_TEXT, Familiarity, Progress, Started
from charlstm.training.loop import StopFlag, train
from charlstm.training.presets import SIZED, Sizing
from charlstm.training.resume import resume_run
from charlstm.training.run import new_run

UNSET = frozenset(SIZED)  # the options a preset may size, as when the user leaves them all unset
NEW_TEXT = "Crème brûlée {x_1} — 東京 and more.\n"  # characters a play never has, some beyond ASCII


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_run(folder: Path, cell: str = "lstm", **changes) -> Path:
    """A base trained briefly on a play, in ``folder``/base."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "play.txt"
    corpus.write_text(play_text(20_000), encoding="utf-8")
    cfg = tiny_train_config(corpus, folder / "base", max_steps=200, eval_every=100, lr=2e-2, **changes)
    train(new_run(cfg, ModelConfig(embedding=8, hidden=16, layers=2, cell=cell)))
    return folder / "base"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return base_run(tmp_path_factory.mktemp("finetune"))


@pytest.fixture(scope="module")
def byte_base(tmp_path_factory) -> Path:
    return base_run(tmp_path_factory.mktemp("finetune_bytes"), max_vocab=20)  # the rest as byte tokens


def new_corpus(folder: Path) -> Path:
    path = folder / "new.txt"
    path.write_text(play_text(6_000, seed=3) + NEW_TEXT * 40, encoding="utf-8")
    return path


def fine_tune(base: Path, folder: Path, name: str = "tuned", **changes):
    cfg = tiny_train_config(new_corpus(folder), folder / name, init_from=str(base), **changes)
    given = frozenset({"lr", "warmup_steps"} & changes.keys())
    return new_run(replace(cfg, lr=changes.get("lr", cfg.lr)), ModelConfig(), given=given | {"corpus"})


@pytest.mark.parametrize("which", ["base", "byte_base"])
def test_known_rows_are_kept_bitwise_and_new_rows_start_as_documented(which, request, tmp_path):
    base_dir = request.getfixturevalue(which)
    before = load_checkpoint(base_dir)
    run = fine_tune(base_dir, tmp_path)
    vocab, old = run.data.corpus.vocab, before.vocab
    weights = {k: v.detach() for k, v in run.learner.model.state_dict().items()}
    assert set(old.chars) <= set(vocab.chars) and {"è", "{", "_"} <= set(vocab.chars) - set(old.chars)
    embed, head, bias = (before.model[k] for k in ("embed.weight", "head.weight", "head.bias"))
    for c in old.chars:  # every character of the base, those the new text lacks too
        assert torch.equal(weights["embed.weight"][vocab.index[c]], embed[old.index[c]]), c
        assert torch.equal(weights["head.weight"][vocab.index[c]], head[old.index[c]]), c
        assert torch.equal(weights["head.bias"][vocab.index[c]], bias[old.index[c]]), c
    for name in ("lstm.weight_hh_l1", "lstm.bias_ih_l0"):
        assert torch.equal(weights[name], before.model[name])
    new = [c for c in vocab.chars if c not in old.index]
    if not old.byte_fallback:  # the mean of the base's rows; together as likely as its rarest character
        own = len(old.chars)
        for c in new:
            i = vocab.index[c]
            assert torch.allclose(weights["embed.weight"][i], embed[:own].mean(0))
            assert torch.allclose(weights["head.weight"][i], head[:own].mean(0))
            assert math.isclose(weights["head.bias"][i], bias[:own].min() - math.log(len(new)), rel_tol=1e-6)
    else:  # the mean of its bytes' rows in; out, its first byte's share of what that byte stood for
        wide = [c for c in new if len(c.encode()) > 1]
        assert {"è", "û", "é", "東"} <= set(wide)
        for c in wide:
            ids = [int(old.byte_ids[b]) for b in c.encode()]
            lead = sum(1 for d in wide if d.encode()[0] == c.encode()[0])  # 3 for è, û and é (0xC3)
            i, byte = vocab.index[c], int(vocab.byte_ids[c.encode()[0]])
            assert torch.allclose(weights["embed.weight"][i], embed[ids].mean(0))
            assert torch.equal(weights["head.weight"][i], head[ids[0]])
            assert math.isclose(weights["head.bias"][i], bias[ids[0]] - math.log(lead + 1), rel_tol=1e-6)
            assert math.isclose(weights["head.bias"][byte], bias[ids[0]] - math.log(lead + 1), rel_tol=1e-6)
        assert "{" in new  # an ASCII character the base wrote as its byte: that byte's rows, exactly
        j, k = vocab.index["{"], int(old.byte_ids[ord("{")])
        assert torch.equal(weights["embed.weight"][j], embed[k]) and torch.equal(weights["head.bias"][j], bias[k])


@pytest.mark.parametrize("which", ["base", "byte_base"])
def test_before_any_step_the_merged_model_scores_the_base_corpus_as_the_base_did(which, request, tmp_path):
    base_dir = request.getfixturevalue(which)
    before = load_checkpoint(base_dir)
    run = fine_tune(base_dir, tmp_path)
    source = resolve_corpus(before.train_config.corpus)
    reading = Reading.of(before.train_config)
    old_tokens = load_in_vocab(source, reading, before.vocab).tokens[-3000:]
    new_tokens = load_in_vocab(source, reading, run.data.corpus.vocab).tokens[-3000:]
    old = evaluate(before.build_model(), np.asarray(old_tokens, dtype=np.int64), char_starts=before.vocab.char_starts())
    model = run.learner.model.eval()
    new = evaluate(model, np.asarray(new_tokens, dtype=np.int64), char_starts=run.data.corpus.vocab.char_starts())
    assert old.chars == new.chars and abs(new.loss - old.loss) < 0.01, (old.loss, new.loss)


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_a_fine_tuning_run_resumes_bitwise_and_never_writes_its_base(cell, tmp_path):
    base_dir = base_run(tmp_path / "b", cell=cell)
    (tmp_path / "b" / "new").mkdir()
    files = {p.name: (sha(p), p.stat().st_mtime_ns) for p in base_dir.iterdir()}
    changes = dict(max_steps=16, log_every=1, eval_every=7, save_every=100, freeze_embedding=0.25)
    straight: list = []
    train(fine_tune(base_dir, tmp_path / "b" / "new", "straight", **changes), straight.append)
    halves, flag = [], StopFlag()

    def interrupt_at_8(event):
        halves.append(event)
        if isinstance(event, Progress) and event.step == 8:
            flag.signum = signal.SIGINT

    assert train(fine_tune(base_dir, tmp_path / "b" / "new", "halves", **changes), interrupt_at_8, flag).step == 8
    train(resume_run(tmp_path / "b" / "new" / "halves", {}), halves.append)
    loss = lambda events: [(e.step, e.loss) for e in events if isinstance(e, Progress)]  # noqa: E731
    assert loss(halves) == loss(straight) and len(loss(straight)) == 16
    ends = [load_checkpoint(tmp_path / "b" / "new" / name / "last.pt") for name in ("straight", "halves")]
    for key, value in ends[0].model.items():
        assert torch.equal(value, ends[1].model[key]), key
    assert ends[0].lineage == ends[1].lineage and ends[1].lineage.sha256 == files["best.pt"][0]
    assert {p.name: (sha(p), p.stat().st_mtime_ns) for p in base_dir.iterdir()} == files


def test_a_frozen_embedding_stays_as_the_base_left_it(base, tmp_path):
    run = fine_tune(base, tmp_path, freeze_embedding=1.0, max_steps=6)
    start = {k: v.detach().clone() for k, v in run.learner.model.state_dict().items()}
    train(run)
    after = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert torch.equal(after.model["embed.weight"], start["embed.weight"])
    assert not torch.equal(after.model["head.weight"], start["head.weight"])
    start = start["embed.weight"]
    moved = fine_tune(base, tmp_path, "moved", max_steps=6)
    train(moved)
    assert not torch.equal(load_checkpoint(tmp_path / "moved" / "last.pt").model["embed.weight"], start)


def test_the_start_reports_the_merge_and_the_defaults_for_fine_tuning(base, tmp_path):
    events: list = []
    run = new_run(
        tiny_train_config(new_corpus(tmp_path), tmp_path / "run", init_from=str(base), max_steps=4),
        ModelConfig(),
        given=frozenset({"corpus"}),
    )
    assert finetune.FINE_TUNE.keys() >= {"lr", "warmup_steps", "batch_size", "seq_len", "weight_drop"}
    assert run.state.sizing["far"] == 0 and run.state.sizing["by_reading"] == {}  # a text near the base's
    assert all(
        getattr(run.tcfg, k, None) == v or getattr(run.mcfg, k, None) == v for k, v in finetune.FINE_TUNE.items()
    )
    assert (run.mcfg.hidden, run.mcfg.layers, run.mcfg.embedding) == (16, 2, 8)
    train(run, events.append)
    started = next(e for e in events if isinstance(e, Started))
    old, vocab = load_checkpoint(base).vocab, run.data.corpus.vocab
    added = [c for c in vocab.chars if c not in old.index]
    text = Path(run.tcfg.corpus).read_text(encoding="utf-8")
    assert started.merge.added == len(added) and started.merge.kept + started.merge.unused == len(old.chars)
    assert started.merge.kept == len(set(old.chars) & set(text))
    assert math.isclose(started.merge.added_share, sum(text.count(c) for c in added) / len(text), rel_tol=1e-9)
    line = words.merge(started)
    assert f"{len(added)} added" in line and str(Path(base) / "best.pt") in line
    assert "--hidden 16" in words.sizing(started.sizing) and "from the base" in words.sizing(started.sizing)


def test_the_api_keyword_records_lineage_shown_by_info_and_runs(base, tmp_path):
    corpus = new_corpus(tmp_path)
    first = charlstm.train(str(corpus), init_from=base, out=str(tmp_path / "runs" / "one"), max_steps=3, **SMALL)
    assert first.step == 3
    second = charlstm.train(str(corpus), init_from=tmp_path / "runs" / "one", out=str(tmp_path / "runs" / "two"),
                            max_steps=3, **SMALL)  # fmt: skip
    info = api.describe(tmp_path / "runs" / "two")
    lineage = info["lineage"]
    assert lineage["sha256"] == sha(tmp_path / "runs" / "one" / "best.pt") and lineage["steps"] == first.step
    assert lineage["base"]["sha256"] == sha(base / "best.pt") and lineage["base"]["base"] is None
    assert lineage["base"]["corpus"].endswith("play.txt") and second.step == 3
    shown = invoke("info", tmp_path / "runs" / "two")
    assert shown.exit_code == 0 and "│ started from" in shown.stdout
    said = words.lineage(Lineage.from_dict(lineage))
    assert said.count("which started from") == 1 and sha(base / "best.pt")[:12] in said
    listed = invoke("runs", tmp_path / "runs", "--json")
    by_name = {r["name"]: r for r in json.loads(listed.stdout)}
    assert by_name["two"]["lineage"]["path"] == str(tmp_path / "runs" / "one" / "best.pt")
    table = runner.invoke(app, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "200"}).stdout.splitlines()
    header = next(line.split() for line in table if line.startswith("run "))
    rows = {line.split()[0]: line.split() for line in table if line.split()[:1] in (["one"], ["two"])}
    column = header.index("base")
    assert rows["two"][column] == "one" and rows["one"][column] == "base"


SMALL = dict(seq_len=16, batch_size=4, eval_every=3, sample_chars=0, precision="fp32", device="cpu")


def test_an_export_serves_as_a_base_and_keeps_the_lineage(base, tmp_path):
    exported = api.export(base, tmp_path / "base.safetensors").path
    run = fine_tune(exported, tmp_path)
    assert run.lineage.sha256 == sha(exported)
    assert torch.equal(run.learner.model.rnn.weight_hh_l0, load_checkpoint(base).model["lstm.weight_hh_l0"])
    assert load_checkpoint(exported).lineage is None
    train(replace(run, tcfg=replace(run.tcfg, max_steps=2)))
    again = api.export(tmp_path / "tuned", tmp_path / "tuned.safetensors").path
    assert load_checkpoint(again).lineage == run.lineage  # an export keeps the lineage


@pytest.mark.parametrize("version", [3, 4])
def test_older_checkpoint_formats_are_bases_through_the_migrations(old_folder, version, tmp_path):
    old = load_checkpoint(old_folder / f"v{version}_run")
    run = fine_tune(old_folder / f"v{version}_run", tmp_path)
    assert old.file_version == version and run.lineage.steps == old.progress.step
    name = next(k for k in old.model if "weight_hh_l0" in k)
    assert torch.equal(run.learner.model.state_dict()[name], old.model[name])


def test_bad_bases_and_shapes_are_one_line_and_write_nothing(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = new_corpus(tmp_path)
    out = tmp_path / "out"
    files = {p.name: (sha(p), p.stat().st_mtime_ns) for p in base.iterdir()}

    def attempt(*args: str, needles: tuple[str, ...]) -> None:
        assert_user_error(invoke("train", "--corpus", corpus, "--out", out, "--max-steps", "2", *args), *needles)
        assert not out.exists() and not (tmp_path / "PWNED").exists()

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint", encoding="utf-8")
    attempt("--init-from", text, needles=("is not a readable charlstm checkpoint",))
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 5, "model_config": {}, "vocab": "ab", "model": RunsCodeWhenUnpickled()}, evil)
    attempt("--init-from", evil, needles=("refused",))
    attempt("--init-from", base, "--hidden", "32", needles=("--hidden 32 differs from the base's 16",))
    attempt("--init-from", base, "--cell", "gru", needles=("--cell 'gru' differs from the base's 'lstm'",))
    attempt("--init-from", tmp_path / "missing", needles=("does not exist",))
    unknown = load_checkpoint(base).to_dict()
    unknown["model_config"]["cell"] = "xlstm"
    torch.save(unknown, tmp_path / "future.pt")
    attempt("--init-from", tmp_path / "future.pt", needles=("cell this version of charlstm does not know", "xlstm"))
    same = invoke("train", "--corpus", corpus, "--out", base, "--overwrite", "--max-steps", "2", "--init-from", base)
    assert_user_error(same, "is the base's own run directory")
    assert_user_error(
        invoke("train", "--resume", base, "--init-from", base), "--init-from cannot be used with --resume"
    )
    assert {p.name: (sha(p), p.stat().st_mtime_ns) for p in base.iterdir()} == files
    attempt("--init-from", tmp_path, needles=("holds no best.pt or last.pt",))
    broken = load_checkpoint(base).to_dict()
    del broken["model"]["embed.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    attempt("--init-from", tmp_path / "broken.pt", needles=("do not fit its own config",))
    damaged = {**load_checkpoint(base).to_dict(), "model_config": "x"}
    torch.save(damaged, tmp_path / "damaged.pt")
    attempt("--init-from", tmp_path / "damaged.pt", needles=("damaged charlstm checkpoint",))
    with pytest.raises(charlstm.UserError, match="--init-from 123 is not valid"):
        charlstm.train(str(corpus), init_from=123, out=str(out), max_steps=2)
    ok = invoke("train", "--corpus", corpus, "--out", out, "--max-steps", "2", "--init-from", base, "--hidden", "16",
                *TINY[4:])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    tuned = {p.name: sha(p) for p in out.iterdir() if p.is_file()}
    again = invoke("train", "--resume", out, "--init-from", base, "--max-steps", "4")  # even its own base
    assert_user_error(again, "--init-from cannot be used with --resume")
    assert {p.name: sha(p) for p in out.iterdir() if p.is_file()} == tuned
    from_file = invoke("train", "--config", base / "config.toml", "--init-from", base, "--corpus", corpus)
    assert_user_error(from_file, "is the base's own run directory")
    assert {p.name: (sha(p), p.stat().st_mtime_ns) for p in base.iterdir()} == files


def test_how_far_a_text_is_from_the_bases_moves_lr_and_weight_drop_toward_a_scratch_runs(tmp_path):
    near, far = NEAR_TEXT, FAR_TEXT
    assert [Familiarity(4 * (1 - b), 4).far for b in (0.7, near, (near + far) / 2, far, -0.2)] == (
        pytest.approx([0, 0, 0.5, 1, 1])
    )
    assert set(finetune.FAR) == {"lr", "weight_drop"}  # declared far_text on the options (config/training.py)
    tcfg, mcfg = replace(tiny_train_config(tmp_path, tmp_path / "x"), lr=0.03), ModelConfig(weight_drop=0.3)
    between = Familiarity(4 * (1 - (near + far) / 2), 4)
    tcfg, mcfg, moved = finetune.fit(tcfg, mcfg, {"lr": 0.01, "weight_drop": 0.5}, between)
    assert moved == {"lr": 0.02, "weight_drop": 0.4} and (tcfg.lr, mcfg.weight_drop) == (0.02, 0.4)


def test_the_base_reads_its_own_text_better_than_a_stranger_and_new_characters_as_a_guess(base, tmp_path):
    ckpt = load_checkpoint(base)
    vocab = ckpt.vocab.merged(CharVocab.from_counts(dict.fromkeys("αβγδεζηθ ", 1), 128))
    own = np.asarray(vocab.encode(play_text(30_000, seed=5)))
    shuffled = np.random.default_rng(0).permutation(own)
    greek = vocab.encode("".join(np.random.default_rng(1).choice(list("αβγδεζηθ"), 30_000)))
    reads = [finetune.familiarity(ckpt, vocab, np.asarray(t)) for t in (own, shuffled, greek)]
    assert reads[0].better > NEAR_TEXT > reads[1].better  # a text near the base's, and its letters shuffled
    assert reads[2].loss == pytest.approx(math.log(8)) == reads[2].guess and reads[2].far == 1  # nothing it wrote
    changed = own.copy()
    changed[1_300:1_900] = shuffled[1_300:1_900]  # between two of the stretches read: never read
    assert finetune.familiarity(ckpt, vocab, changed) == reads[0]
    with_bytes = ckpt.vocab.merged(CharVocab.from_counts(dict.fromkeys("αβγδεζηθ ", 1), 128, byte_fallback="on"))
    assert len(with_bytes) > len(vocab) + 200  # byte tokens: places the text never uses
    in_bytes = finetune.familiarity(ckpt, with_bytes, np.asarray(with_bytes.encode(play_text(30_000, seed=5))))
    assert in_bytes.guess == reads[0].guess and in_bytes.better == pytest.approx(reads[0].better, abs=0.02)


def test_a_far_text_takes_a_scratch_runs_lr_and_weight_drop_unless_the_user_set_them(base, tmp_path):
    corpus = tmp_path / "greek.txt"
    rng = np.random.default_rng(2)
    corpus.write_text(" ".join("".join(rng.choice(list("αβγδεζηθ"), 5)) for _ in range(6_000)), encoding="utf-8")
    cfg = tiny_train_config(corpus, tmp_path / "far", init_from=str(base), max_steps=2)
    scratch = new_run(replace(cfg, init_from=None, out=str(tmp_path / "scratch")), ModelConfig(), unset=UNSET)
    run = new_run(cfg, ModelConfig(), given=frozenset({"corpus"}), unset=UNSET)
    assert (run.tcfg.lr, run.mcfg.weight_drop) == (scratch.tcfg.lr, scratch.mcfg.weight_drop) != (0.01, 0.5)
    assert run.state.sizing["by_reading"] == {"lr": scratch.tcfg.lr, "weight_drop": scratch.mcfg.weight_drop}
    line = words.sizing(Sizing.from_dict(run.state.sizing))
    assert "as from scratch for a text far from the base's" in line and "text with the base's model and chunk" in line
    assert run.learner.model.config == run.mcfg
    events: list = []
    train(run, events.append)
    line = words.merge(next(e for e in events if isinstance(e, Started)))
    assert re.search(r"the base reads the text at [\d.]+ nats a token, -?\d+% better than a guess's", line)
    assert line.endswith("a text far from the base's")
    cfg = replace(cfg, out=str(tmp_path / "set"), lr=5e-3)
    run = new_run(cfg, ModelConfig(), given=frozenset({"corpus", "lr"}), unset=UNSET - {"lr"})
    assert (run.tcfg.lr, run.mcfg.weight_drop) == (5e-3, scratch.mcfg.weight_drop)
