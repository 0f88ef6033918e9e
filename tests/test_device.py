import platform
import subprocess
import sys

import pytest
import torch

from charlstm.device import autocast, resolve_device
from charlstm.errors import UserError


def test_auto_device_and_cpu():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_cuda_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_autocast_runs_in_bf16_only_when_asked():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32


# Training steps of a model whose largest buffers exceed glibc's 32 MB mmap ceiling: the page faults
# a step costs, before and after keep_freed_memory().
FAULTS_SCRIPT = """
import resource, torch
import torch.nn.functional as F
from charlstm.config import ModelConfig
from charlstm.device import keep_freed_memory
from charlstm.net.model import CharLSTM

torch.manual_seed(0)
model = CharLSTM(ModelConfig(vocab_size=65, hidden=256))
x, y = torch.randint(0, 65, (2, 64, 128))  # a chunk whose gates, (128, 64, 1024) fp32, take 33.5 MB

def faults_per_step(warmup, steps):  # the median step's: the heap still grows now and then (16,000 seen)
    counts = []
    for i in range(warmup + steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).backward()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts[warmup:])[steps // 2]

print(faults_per_step(2, 5), keep_freed_memory(), faults_per_step(2, 9))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_lets_training_steps_reuse_their_buffers_without_page_faults():
    """In a fresh process, so the test's own settings leave the suite's as they are."""
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], check=True, capture_output=True, text=True).stdout
    default, took, kept = out.split()
    assert took == "True"
    assert int(default) > 10_000  # the gates alone are 8,192 pages of 4 KiB, mapped afresh each step
    assert int(kept) < int(default) / 8  # 0-1,000 measured, against 38,000-51,000


# glibc's malloc as a program sees it, before and after charlstm.train() in the same process: a
# 64 MB block is mapped on its own, and the mmap threshold adjusts itself (a block freed from its own
# mapping raises it, so the same size again comes from the heap), which any mallopt turns off for good.
ALLOCATOR_SCRIPT = """
import ctypes, sys
from pathlib import Path

import charlstm

libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def mapped(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    alone = libc.mallinfo2().hblks > before
    libc.free(block)
    return alone

def allocator():
    # the first size above the threshold as it stands is mapped; freed, it raises the threshold
    size = next((mb << 20 for mb in (1, 2, 4, 8, 16, 24) if mapped(mb << 20)), None)
    return mapped(64 << 20), size is not None and not mapped(size)

print(*allocator())
Path(sys.argv[1]).write_text("to be or not to be, that is the question. " * 400)
charlstm.train(sys.argv[1], out=sys.argv[2], max_steps=2, hidden=16, embedding=8, seq_len=16, batch_size=4,
               precision="fp32", sample_chars=0, device="cpu")
print(*allocator())
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
    reason="mallopt is glibc's, mallinfo2 glibc 2.33's",
)
def test_training_through_the_api_leaves_the_process_allocator_as_it_found_it(tmp_path):
    """A notebook that trains once must not keep mmap off, the heap's peak and a fixed mmap
    threshold for the rest of its life: the library leaves glibc's settings alone."""
    command = [sys.executable, "-c", ALLOCATOR_SCRIPT, str(tmp_path / "c.txt"), str(tmp_path / "run")]
    before, after = subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()
    assert before == "True True"  # glibc's defaults, in a fresh process
    assert after == before
