import numba
import numpy as np

from charlstm.sampling import kernels
from charlstm.sampling.draw import SamplingRule


def draw(logits, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One id per row of logits (B, V), as the many-stream step draws them (top_k 0, top_p 1: off)."""
    rng = np.random.default_rng(seed)
    rows = np.ascontiguousarray(logits, dtype=np.float32)
    z = np.empty(rows.shape[1])
    uniforms, rule = 1.0 - rng.random(len(rows)), np.array(SamplingRule(temperature, top_k, top_p).args())
    none = np.zeros(rows.shape[1], np.int32)  # nothing written, nothing recent, no bias
    return np.array(
        [
            kernels.draw(row, rule, none.astype(np.float32), none, none, u, z)
            for row, u in zip(rows, uniforms, strict=True)
        ]
    )


def kept(logits, keep) -> list[bool]:
    row = np.array(logits, dtype=np.float64)
    keep(row)
    return np.isfinite(row).tolist()


def test_fast_tanh_is_accurate():
    x = np.linspace(-20, 20, 400_001).astype(np.float32)[::97]
    got = np.array([kernels.tanh32(v) for v in x])  # float32 scalars: the kernels' own version
    assert any(sig == (numba.float32,) for sig in kernels.tanh32.signatures)
    assert np.abs(got - np.tanh(x.astype(np.float64))).max() < 2e-7
    assert kernels.tanh32(np.float32(0)) == 0.0 and kernels.tanh32(np.float32(-1e-30)) <= 0.0


def test_top_k_keeps_k_largest():
    logits = [0.1, 3.0, 2.0, -1.0, 2.5]
    assert kept(logits, lambda z: kernels.keep_top_k(z, 2)) == [False, True, False, False, True]
    assert all(kept(logits, lambda z: kernels.keep_top_k(z, 0)))  # 0: off
    rows = np.tile(np.array([logits], dtype=np.float32), (200, 1))
    assert set(draw(rows, 0, temperature=5.0, top_k=2).tolist()) == {1, 4}
    assert draw(rows, 3, top_k=7).tolist() == draw(rows, 3).tolist()  # past the vocabulary: all kept


def test_top_p_keeps_smallest_nucleus():
    logits = np.log([0.15, 0.5, 0.05, 0.3]).tolist()
    nucleus = lambda p: kept(logits, lambda z: kernels.keep_top_p(z, p))  # noqa: E731
    assert nucleus(0.7) == nucleus(0.79) == [False, True, False, True]
    assert nucleus(0.81) == [True, True, False, True]
    assert nucleus(0.01) == nucleus(0.0) == [False, True, False, False]  # the likeliest always stays
    assert all(nucleus(1.0))
    rows = np.tile(np.array([logits], dtype=np.float32), (300, 1))
    assert set(draw(rows, 0, top_p=0.7).tolist()) == {1, 3}


def test_draws_follow_the_distribution():
    rows = np.log(np.tile(np.array([[0.8, 0.2]], dtype=np.float32), (4000, 1)))
    assert abs(draw(rows, 0).mean() - 0.2) < 0.03
    assert abs(draw(rows, 1, temperature=1e6).mean() - 0.5) < 0.03  # very hot: nearly uniform


def test_temperature_zero_is_argmax_and_tiny_temperatures_do_not_overflow():
    rows = np.array([[49.0, 50.0, -3.0]], dtype=np.float32)
    assert draw(rows, 0, temperature=0.0).tolist() == [1]
    assert draw(rows, 0, temperature=1e-40).tolist() == [1]


def drawn(logits, rule: SamplingRule, *, bias=None, written=None, recent=None, draws: int = 400) -> set[int]:
    """The ids one row of logits gives under ``rule`` over ``draws`` uniforms spread over (0, 1]."""
    row = np.asarray(logits, dtype=np.float32)
    zeros = np.zeros(len(row), np.int32)
    bias = np.zeros(len(row), np.float32) if bias is None else np.asarray(bias, np.float32)
    written = zeros if written is None else np.asarray(written, np.int32)
    recent = zeros if recent is None else np.asarray(recent, np.int32)
    z, args = np.empty(len(row)), np.array(rule.args())
    return {kernels.draw(row, args, bias, written, recent, u, z) for u in np.linspace(1 / draws, 1.0, draws)}


def test_a_bias_moves_the_likeliest_and_minus_100_bans():
    logits = [2.0, 1.0, 0.0, -1.0]
    assert drawn(logits, SamplingRule(0.0), bias=[0, 1.5, 0, 0]) == {1}
    assert 0 not in drawn(logits, SamplingRule(1.0), bias=[-np.inf, 0, 0, 0])
    assert SamplingRule(1.0, bias=((0, -100.0), (2, 3.0))).bias_row(4).tolist() == [-np.inf, 0, 3, 0]


def test_the_penalties_lower_what_was_written_or_read():
    logits = [2.0, 1.8, -1.0]
    assert drawn(logits, SamplingRule(0.0, presence=0.5), written=[1, 0, 0]) == {1}  # 1.5 < 1.8
    assert drawn(logits, SamplingRule(0.0, presence=0.1), written=[1, 0, 0]) == {0}
    assert drawn(logits, SamplingRule(0.0, frequency=0.1), written=[3, 0, 0]) == {1}  # 2 - 0.3 < 1.8
    assert drawn(logits, SamplingRule(0.0, repetition=1.2), recent=[1, 0, 0]) == {1}  # 2 / 1.2 < 1.8
    assert drawn([-1.0, -1.1], SamplingRule(0.0, repetition=1.2), recent=[1, 0]) == {1}  # -1 * 1.2 < -1.1
    assert drawn(logits, SamplingRule(0.0, repetition=1.2), recent=[0, 1, 0]) == {0}
    assert drawn(logits, SamplingRule(0.0, presence=-1.0), written=[0, 0, 1]) == {0}  # a negative one raises


def test_min_p_keeps_what_is_at_least_that_fraction_as_likely_as_the_likeliest():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert drawn(logits, SamplingRule(1.0, min_p=0.5)) == {0, 1}  # 0.3 >= 0.25; 0.15 is not
    assert drawn(logits, SamplingRule(1.0, min_p=0.2)) == {0, 1, 2}
    assert drawn(logits, SamplingRule(1.0)) == {0, 1, 2, 3}
    assert drawn(logits, SamplingRule(1.0, min_p=1.0)) == {0}


def test_the_repetition_window_counts_the_last_tokens_only():
    ring, at, recent = np.zeros(3, np.int64), np.zeros(2, np.int64), np.zeros(5, np.int32)
    for token in [1, 2, 3, 4, 4]:
        kernels.remember(token, 3, ring, at, recent)
    assert recent.tolist() == [0, 0, 0, 1, 2]  # 1 and 2 have left the window of 3
