"""The CUDA paths: training every cell in fp32 and bf16, bitwise resume on the GPU, a GPU-trained
run read on the CPU, the peephole cell's GPU forward and backward against the CPU's, and the
speed probe. They need a CUDA GPU, so CI (CPU only) skips them; run them where one is present."""

import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

from charlstm.choices import Cell
from charlstm.config import ModelConfig
from charlstm.data.batches import StreamBatches
from charlstm.net.model import CharLSTM
from charlstm.net.peephole import PeepholeLSTM
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.evaluate import evaluate
from charlstm.training.events import Progress
from charlstm.training.loop import StopFlag, train
from charlstm.training.probe import training_speed
from charlstm.training.resume import resume_run
from charlstm.training.run import new_run

CELLS = Cell.values()

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DROPOUTS = {"dropout": 0.3, "weight_drop": 0.3, "embed_dropout": 0.1}


def losses(events: list) -> list[tuple[int, float]]:
    return [(e.step, e.loss) for e in events if isinstance(e, Progress)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_learns_on_the_gpu(tiny_train, tmp_path, cell, precision):
    model_cfg = ModelConfig(embedding=8, hidden=32, layers=2, cell=cell, **DROPOUTS)
    tcfg = replace(tiny_train, device="cuda", precision=precision, max_steps=60, lr=3e-2, log_every=1)
    events = []
    result = train(new_run(tcfg, model_cfg), events.append)
    first, last = losses(events)[0][1], losses(events)[-1][1]
    assert result.failure is None and last < first - 0.5
    saved = load_checkpoint(tmp_path / "run")
    assert all(t.device.type == "cpu" for t in saved.model.values())  # saved for any machine
    assert "cuda" in saved.rng


@pytest.mark.parametrize("cell", CELLS)
def test_resume_on_the_gpu_is_bitwise(tiny_train, tmp_path, cell):
    model_cfg = ModelConfig(embedding=8, hidden=32, layers=2, cell=cell, **DROPOUTS)
    base = replace(tiny_train, device="cuda", max_steps=20, log_every=1, eval_every=7, save_every=100)
    straight = []
    train(new_run(replace(base, out=str(tmp_path / "straight")), model_cfg), straight.append)
    halves, flag = [], StopFlag()

    def interrupt_at_10(event):
        halves.append(event)
        if isinstance(event, Progress) and event.step == 10:
            flag.signum = signal.SIGINT

    train(new_run(replace(base, out=str(tmp_path / "halves")), model_cfg), interrupt_at_10, flag)
    train(resume_run(tmp_path / "halves", {}), halves.append)
    assert losses(halves) == losses(straight)
    a, b = load_checkpoint(tmp_path / "straight").model, load_checkpoint(tmp_path / "halves").model
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_a_gpu_run_evaluates_the_same_on_the_cpu(tiny_train, tmp_path):
    tcfg = replace(tiny_train, device="cuda", max_steps=30)
    train(new_run(tcfg, ModelConfig(embedding=8, hidden=32, layers=2)))
    ckpt = load_checkpoint(tmp_path / "run")
    tokens = np.random.default_rng(0).integers(0, len(ckpt.vocab), 5_000)
    on_cpu = evaluate(ckpt.build_model(), tokens, 64)
    on_gpu = evaluate(ckpt.build_model().cuda(), tokens, 64, device="cuda")
    assert on_gpu.chars == on_cpu.chars == len(tokens) - 1
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-4)


def test_peephole_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    cpu = PeepholeLSTM(input_size=12, hidden=24, layers=2, dropout=0.0)
    gpu = PeepholeLSTM(input_size=12, hidden=24, layers=2, dropout=0.0).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(40, 5, 12, dtype=torch.float32)
    outs = []
    for net, device in ((cpu, "cpu"), (gpu, "cuda")):
        xs = x.to(device).requires_grad_()
        y, (h, c) = net(xs)
        (y.sum() + h.square().sum() + c.sum()).backward()
        outs.append([t.detach().cpu() for t in (y, h, c, xs.grad, *(p.grad for p in net.parameters()))])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_speed_probe_times_the_gpu():
    device = torch.device("cuda")
    model = CharLSTM(ModelConfig(vocab_size=65, embedding=32, hidden=128, layers=1)).to(device)
    batches = StreamBatches(np.random.default_rng(0).integers(0, 65, 40_000), 32, 64)
    reading = training_speed(model, batches, device, "bf16")
    assert reading.chars_per_s > 0 and len(reading.passes) == 3
