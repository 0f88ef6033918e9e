"""``--tensorboard``: the run's TensorBoard log, read back with TensorBoard's own reader, holds the
scalars of metrics.jsonl and the previews; a resumed run repeats no step; without the package the
option is one line and exit 2, before anything is written."""

import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import TINY, assert_user_error, invoke
from test_training_distributed import torchrun

import charlstm
from charlstm.store import metrics
from charlstm.store.checkpoint import load_checkpoint
from charlstm.store.tensorboard import EVENTS, SAMPLE, SCALARS, as_markdown
from charlstm.training.events import Evaluated
from charlstm.training.run import make_run_dir

TAGS = [tag for fields in SCALARS.values() for tag in fields.values()]
TINY_RUN = dict(hidden=16, embedding=8, layers=2, seq_len=16, batch_size=4, lr=0.02, warmup_steps=2, precision="fp32")


def read_log(run_dir: Path) -> EventAccumulator:
    log = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every point
    log.Reload()
    return log


def samples_of(log: EventAccumulator) -> dict[int, str]:
    return {e.step: e.tensor_proto.string_val[0].decode() for e in log.Tensors(SAMPLE + "/text_summary")}


def scalars_as_read(run_dir: Path) -> list[dict[str, list[tuple[int, float]]]]:
    """Each tag's (step, value) points as read by EventAccumulator, and by the loader of
    TensorBoard's Python server (``--load_fast=false``), which purges in its own way."""
    log = read_log(run_dir)
    plugin = plugin_event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    plugin.Reload()
    assert set(log.Tags()["scalars"]) <= set(TAGS)  # no scalar that metrics.jsonl lacks
    return [
        {tag: [(e.step, e.value) for e in log.Scalars(tag)] for tag in TAGS if tag in log.Tags()["scalars"]},
        {
            tag: [(e.step, e.tensor_proto.float_val[0]) for e in plugin.Tensors(tag)]
            for tag in TAGS
            if tag in plugin.Tags()["tensors"]
        },
    ]


def assert_log_matches_metrics(run_dir: Path) -> None:
    """Each scalar of metrics.jsonl is in the log once, at its step, with its value; nothing else is."""
    records = metrics.read(run_dir)
    for read in scalars_as_read(run_dir):
        for kind, fields in SCALARS.items():
            for field, tag in fields.items():
                expected = [(r["step"], r[field]) for r in records if r["type"] == kind and r.get(field) is not None]
                points = read.get(tag, [])
                steps = [step for step, _ in points]
                assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing: none repeated
                assert points == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected], tag


def test_a_resumed_run_continues_the_log_without_repeating_a_step(corpus_file, tmp_path):
    """The first session goes on to step 12 after the step-6 checkpoint, which is then put back as
    last.pt: as if it had crashed after logging steps 8 to 12. The resumed session's points replace
    those, and the previews are those the sessions showed."""
    out, saved, shown = tmp_path / "run", tmp_path / "step6.pt", {}

    def keep(event):
        if isinstance(event, Evaluated):
            shown[event.step] = event.sample
            if event.step == 6:
                shutil.copy(out / "last.pt", saved)

    options = dict(out=str(out), eval_every=6, save_every=4, log_every=2, sample_chars=20, **TINY_RUN)
    charlstm.train(str(corpus_file), tensorboard=True, max_steps=12, on_event=keep, **options)
    assert read_log(out).Scalars("train/loss")[-1].step == 12
    shutil.copy(saved, out / "last.pt")
    del shown[12]
    resumed = charlstm.train(resume=out, max_steps=16, on_event=keep)
    assert resumed.step == 16 and len(list(out.glob(EVENTS))) == 2
    assert_log_matches_metrics(out)
    assert read_log(out).Scalars("val/loss")[-1].step == 16
    assert samples_of(read_log(out)) == {step: as_markdown(text) for step, text in shown.items()}
    assert set(shown) == {6, 12, 16} and all(shown.values())


def test_a_resume_turns_the_log_on_with_the_run_so_far(corpus_file, tmp_path):
    out = tmp_path / "run"
    first = invoke("train", "--corpus", corpus_file, "--out", out, "--max-steps", 10, *TINY)
    assert first.exit_code == 0 and not list(out.glob(EVENTS))
    more = invoke("train", "--resume", out, "--max-steps", 15, "--tensorboard")
    assert more.exit_code == 0, more.output
    assert_log_matches_metrics(out)
    assert [p.step for p in read_log(out).Scalars("val/loss")] == [10, 15]
    assert list(samples_of(read_log(out))) == [15]  # the earlier previews were never kept
    assert load_checkpoint(out / "last.pt").train_config.tensorboard  # and a later resume keeps it on
    assert "tensorboard = true" in (out / "config.toml").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_with_two_processes_only_the_main_one_writes_the_log(corpus_file, tmp_path):
    out = tmp_path / "run"
    torchrun("train", "--corpus", corpus_file, "--out", out, "--max-steps", 8, *TINY, "--tensorboard")
    assert len(list(out.glob(EVENTS))) == 1
    assert_log_matches_metrics(out)


@pytest.fixture
def without_tensorboard(monkeypatch):
    """An installation without the tensorboard package: importing it fails, as does torch's writer."""
    for name in [n for n in sys.modules if n.split(".")[0] == "tensorboard" or n.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)


def test_without_the_package_the_option_is_one_line_and_nothing_is_written(corpus_file, tmp_path, request):
    out = tmp_path / "run"
    trained = invoke("train", "--corpus", corpus_file, "--out", out, "--max-steps", 4, *TINY)
    assert trained.exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    request.getfixturevalue("without_tensorboard")
    install = "pip install 'charlstm[tensorboard]'"
    assert_user_error(invoke("train", "--corpus", corpus_file, "--out", tmp_path / "new", "--tensorboard"), install)
    assert not (tmp_path / "new").exists()
    assert_user_error(invoke("train", "--resume", out, "--max-steps", 8, "--tensorboard"), install)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(charlstm.UserError, match="tensorboard package"):
        charlstm.train(str(corpus_file), out=str(tmp_path / "api"), tensorboard=True)


def test_a_run_started_afresh_drops_the_earlier_runs_log(tmp_path):
    (tmp_path / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"old")
    make_run_dir(tmp_path)
    assert not list(tmp_path.glob(EVENTS))


def test_a_session_without_the_log_leaves_no_gap_once_it_is_on_again(corpus_file, tmp_path):
    out = tmp_path / "run"
    options = dict(out=str(out), eval_every=4, save_every=4, log_every=2, sample_chars=0, **TINY_RUN)
    charlstm.train(str(corpus_file), tensorboard=True, max_steps=4, **options)
    charlstm.train(resume=out, max_steps=8, tensorboard=False)  # steps 5-8 not logged
    charlstm.train(resume=out, max_steps=12, tensorboard=True)  # on again: from the run's metrics so far
    assert_log_matches_metrics(out)
    assert [p.step for p in read_log(out).Scalars("val/loss")] == [4, 8, 12]


def test_a_log_that_cannot_be_written_is_one_clear_error(corpus_file, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "flush", full)  # the first flush: before the first checkpoint
    out = tmp_path / "run"
    with pytest.raises(charlstm.UserError, match=r"could not write the TensorBoard log in .*No space left on device"):
        charlstm.train(str(corpus_file), out=str(out), tensorboard=True, max_steps=8, eval_every=4, **TINY_RUN)
    assert metrics.ending(metrics.read(out))["stopped_by"] == "error"  # the run says how it ended
