"""Configuration dataclasses, one per concern, validated once when they are built. Field names are
the command-line options (``seq_len`` is ``--seq-len``) and the API's keywords; each option is
declared in its field's metadata (``opt``, see ``options.py``), from which the command line,
config files, the API and the docs are built. Every config is saved in every checkpoint as a
plain dict (``to_dict``), rebuilt by ``from_dict``, which tolerates fields added or dropped.
Training's configs are in ``training.py``, those of using a model in ``use.py``."""

from charlstm.config.training import (
    DEFAULT_EPOCHS,
    DEFAULT_MAX_VOCAB,
    TRAINING,
    ModelConfig,
    StartConfig,
    TrainConfig,
    train_options,
    training_configs,
)
from charlstm.config.use import EXPLAIN_CELLS, MAX_SAMPLES, EvalConfig, ExplainConfig, SampleConfig, ServeConfig

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_MAX_VOCAB",
    "EXPLAIN_CELLS",
    "MAX_SAMPLES",
    "TRAINING",
    "EvalConfig",
    "ExplainConfig",
    "ModelConfig",
    "SampleConfig",
    "ServeConfig",
    "StartConfig",
    "TrainConfig",
    "train_options",
    "training_configs",
]
