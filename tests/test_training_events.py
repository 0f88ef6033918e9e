from pathlib import Path

from charlstm.training.events import TrainResult


def result(stopped_by: str) -> TrainResult:
    return TrainResult(Path("r"), 14, 0.1, 2.0, 3.0, 3.1, float("nan"), 1.0, stopped_by, "charlstm train --resume r")


def test_only_a_nan_loss_is_a_failure_and_it_says_what_to_try():
    assert result("nan").failure.startswith("the training loss became NaN or infinite by step 14;")
    assert "--lr" in result("nan").failure and "best.pt" in result("nan").failure
    assert all(result(reason).failure is None for reason in ("max_steps", "epochs", "max_time", "signal"))
