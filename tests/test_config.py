import pytest

from charlstm.config import EvalConfig, ModelConfig, SampleConfig, TrainConfig
from charlstm.errors import UserError
from charlstm.options import option


def test_option_spelling():
    assert option("seq_len") == "--seq-len"


@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (ModelConfig, {"hidden": 0}, "--hidden 0"),
        (ModelConfig, {"layers": -1}, "--layers -1"),
        (ModelConfig, {"dropout": 1.0}, "--dropout 1.0"),
        (ModelConfig, {"dropout": -0.1}, "[0, 1)"),
        (ModelConfig, {"weight_drop": 1.0}, "--weight-drop 1.0"),
        (ModelConfig, {"embed_dropout": float("nan")}, "--embed-dropout nan"),
        (TrainConfig, {"lr": 0.0}, "--lr 0.0"),
        (TrainConfig, {"lr": float("nan")}, "--lr nan"),
        (TrainConfig, {"grad_clip": -1.0}, "--grad-clip -1.0"),
        (TrainConfig, {"schedule": "linear"}, "cosine, step, plateau, constant"),
        (TrainConfig, {"device": "tpu"}, "auto, cpu, cuda, mps"),
        (TrainConfig, {"precision": "fp16"}, "auto, fp32, bf16"),
        (TrainConfig, {"val_fraction": 1.0}, "--val-fraction"),
        (TrainConfig, {"batch_size": 0}, "--batch-size 0"),
        (TrainConfig, {"seq_len": -5}, "--seq-len -5"),
        (TrainConfig, {"max_time": -1.0}, "--max-time"),
        (TrainConfig, {"max_steps": 0}, "--max-steps"),
        (SampleConfig, {"temperature": -1.0}, "--temperature -1.0"),
        (SampleConfig, {"temperature": float("nan")}, "--temperature nan"),
        (SampleConfig, {"top_k": -1}, "--top-k -1"),
        (SampleConfig, {"top_p": 0.0}, "(0, 1]"),
        (SampleConfig, {"top_p": 1.5}, "--top-p 1.5"),
        (SampleConfig, {"length": -1}, "--length -1"),
        (SampleConfig, {"unknown": "keep"}, "error, skip"),
        (EvalConfig, {"split": "test"}, "all, train, val"),
        (EvalConfig, {"seq_len": 0}, "--seq-len 0"),
    ],
)
def test_invalid_values_name_the_option(cls, kwargs, needle):
    with pytest.raises(UserError) as info:
        cls(**kwargs)
    assert needle in str(info.value)
    assert "expected" in str(info.value)


def test_round_trip_and_unknown_keys_ignored():
    cfg = TrainConfig(lr=1e-3, max_time=5.0)
    assert TrainConfig.from_dict({**cfg.to_dict(), "added_later": 1}) == cfg
    assert ModelConfig.from_dict(ModelConfig(hidden=32).to_dict()).hidden == 32


def test_seed_range():
    with pytest.raises(UserError, match="--seed"):
        TrainConfig(seed=2**64)
    with pytest.raises(UserError, match="--seed"):
        SampleConfig(seed=-1)
    assert SampleConfig(seed=2**63 - 1).seed == 2**63 - 1


def test_added_and_dropped_fields_round_trip():
    saved = ModelConfig(hidden=32).to_dict()
    del saved["dropout"]  # a field added after this dict was written takes its default
    assert ModelConfig.from_dict({**saved, "retired": True}) == ModelConfig(hidden=32)


def test_evaluation_measures_the_validation_tail_unless_given_a_text():
    assert EvalConfig().part == "val" and EvalConfig(corpus="x.txt").part == "all"
    assert EvalConfig(corpus="x.txt", split="train").part == "train"


def test_explain_options():
    from charlstm.config import EXPLAIN_CELLS, ExplainConfig

    assert ExplainConfig("t", "p", cell_ids="3, 17,3").cell_ids == (3, 17)  # the command line's form, repeats once
    assert ExplainConfig("t", "p", cell_ids=[5, 1]).cell_ids == (5, 1)
    assert ExplainConfig("t", "p").blocks == EXPLAIN_CELLS and ExplainConfig("t", "p", cells=2).blocks == 2
    for kwargs, needle in [
        ({"chars": 0}, "--chars 0"),
        ({"cells": -1}, "--cells -1"),
        ({"cell_ids": "3,x"}, "--cell-ids '3,x'"),
        ({"cell_ids": "-1"}, "--cell-ids '-1'"),
        ({"cell_ids": ""}, "--cell-ids ''"),
        ({"cell_ids": [True]}, "--cell-ids [True]"),
        ({"value": "gate"}, "cell, hidden"),
        ({"cells": 2, "cell_ids": "1"}, "--cells and --cell-ids"),
    ]:
        with pytest.raises(UserError, match="expected") as info:
            ExplainConfig("t", "p", **kwargs)
        assert needle in str(info.value), kwargs
