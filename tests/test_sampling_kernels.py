import numba
import numpy as np

from charlstm.sampling import kernels


def draw(logits, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """One id per row of logits (B, V), as the many-stream step draws them (top_k 0, top_p 1: off)."""
    rng = np.random.default_rng(seed)
    rows = np.ascontiguousarray(logits, dtype=np.float32)
    z = np.empty(rows.shape[1])
    uniforms = 1.0 - rng.random(len(rows))
    return np.array([kernels.draw(row, temperature, top_k, top_p, u, z) for row, u in zip(rows, uniforms, strict=True)])


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
