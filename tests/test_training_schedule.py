import math

import pytest

from charlstm.training.schedule import get_lr, plateau_update, warmup_factor


def test_warmup_ramps_linearly_then_holds():
    assert warmup_factor(0, 10) == pytest.approx(0.1)
    assert warmup_factor(4, 10) == pytest.approx(0.5)
    assert warmup_factor(10, 10) == 1.0
    assert warmup_factor(3, 0) == 1.0


def test_cosine_goes_from_peak_to_floor():
    assert get_lr("cosine", 1.0, 100, 0.0, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert get_lr("cosine", 1.0, 100, 0.5, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert get_lr("cosine", 1.0, 100, 1.0, min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [get_lr("cosine", 1.0, 100, p / 10) for p in range(11)]
    assert values == sorted(values, reverse=True)


def test_cosine_with_warmup_multiplies():
    assert get_lr("cosine", 2.0, 0, 0.0, warmup_steps=4) == pytest.approx(0.5)


def test_step_schedule_drops_tenfold_at_milestones():
    assert get_lr("step", 1.0, 100, 0.49) == pytest.approx(1.0)
    assert get_lr("step", 1.0, 100, 0.5) == pytest.approx(0.1)
    assert get_lr("step", 1.0, 100, 0.8) == pytest.approx(0.01)


def test_constant_and_plateau():
    assert get_lr("constant", 3e-3, 10, 0.9) == pytest.approx(3e-3)
    assert get_lr("plateau", 1.0, 10, 0.3, plateau_scale=0.25) == pytest.approx(0.25)
    assert get_lr("plateau", 1.0, 10, 0.3, min_lr_ratio=0.5, plateau_scale=0.25) == pytest.approx(0.5)
    assert plateau_update(1.0, 2.0, best_before=1.5) == 0.5
    assert plateau_update(1.0, 1.0, best_before=1.5) == 1.0


def test_progress_is_clamped_and_unknown_schedule_refused():
    assert get_lr("cosine", 1.0, 10, 7.0) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(get_lr("cosine", 1.0, 10, -1.0), 1.0)
    with pytest.raises(ValueError):
        get_lr("linear", 1.0, 0, 0.0)
