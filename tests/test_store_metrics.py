"""metrics.jsonl: records appended and read back, a torn last line, how a session ended."""

import json
import signal

import pytest

from charlstm.errors import UserError
from charlstm.store import metrics


def test_records_read_back_in_order_and_a_torn_line_is_left_out(tmp_path):
    metrics.append(tmp_path, {"type": "train", "step": 2})
    metrics.append(tmp_path, {"type": "eval", "step": 2, "val_loss": 1.5})
    with open(tmp_path / metrics.METRICS, "a") as f:
        f.write('{"type": "train", "st')  # a process killed mid-write
    assert metrics.read(tmp_path) == [{"type": "train", "step": 2}, {"type": "eval", "step": 2, "val_loss": 1.5}]


def test_a_folder_without_a_log_is_one_error(tmp_path):
    with pytest.raises(UserError, match="holds no metrics.jsonl"):
        metrics.read(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        metrics.read(tmp_path / "nowhere")


def test_the_end_record_closes_the_log_only_while_it_is_last():
    end = metrics.end_record(12, 3.14159, "signal", signal.SIGTERM)
    assert end == {
        "type": "end",
        "step": 12,
        "elapsed": 3.142,
        "stopped_by": "signal",
        "signal": "SIGTERM",
        "error": None,
    }
    assert json.loads(json.dumps(end)) == end
    train = {"type": "train", "step": 13}
    assert metrics.ending([train, end]) == end
    assert metrics.ending([end, train]) is None  # resumed since: running again
    assert metrics.ending([]) is None
