"""Settings files: read with either spelling of a key, checked key by key, written so that they
read back to the same settings."""

import pytest

from charlstm.config import ModelConfig, TrainConfig
from charlstm.errors import UserError
from charlstm.store import configfile


def write(tmp_path, text: str):
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_keys_in_either_spelling_become_option_names(tmp_path):
    path = write(tmp_path, 'max-time = 120\nhidden = 256\nmax_vocab = 96\nschedule = "step"\nskip-bad-files = true\n')
    options = configfile.read_options(path)
    assert options == {"max_time": 120.0, "hidden": 256, "max_vocab": 96, "schedule": "step", "skip_bad_files": True}
    assert isinstance(options["max_time"], float)  # a whole number is a number too


@pytest.mark.parametrize(
    "text, needles",
    [
        ("hiden = 32\n", ["unknown option 'hiden'", "did you mean 'hidden'?"]),
        ("[model]\nhidden = 32\n", ["unknown option 'model'"]),
        ('hidden = "512"\n', ['hidden = "512" is not valid', "a whole number", "--hidden"]),
        ("hidden = 512.0\n", ["hidden = 512.0", "a whole number"]),
        ("hidden = true\n", ["hidden = true", "a whole number"]),
        ("lr = [0.1]\n", ["lr = [0.1]", "a number"]),
        ("schedule = 3\n", ["schedule = 3", "a quoted string"]),
        ("overwrite = 1\n", ["overwrite = 1", "true or false"]),
        ("vocab-size = 10\n", ["unknown option 'vocab-size'"]),  # follows from the corpus
        ("max_time = 5\nmax-time = 6\n", ["max-time twice"]),
        ("hidden = \n", ["not valid TOML", "line 1"]),
        ("dropout = 1.5\n", ["config file", "--dropout 1.5 is not valid", "[0, 1)"]),
        ('cell = "gruu"\n', ["config file", "--cell 'gruu'", "lstm, gru, peephole"]),
        ("max-time = -5\n", ["config file", "--max-time -5"]),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(tmp_path, text, needles):
    with pytest.raises(UserError) as caught:
        configfile.read_options(write(tmp_path, text))
    message = str(caught.value)
    assert "settings.toml" in message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_missing_file_or_a_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        configfile.read_options(tmp_path / "none.toml")
    with pytest.raises(UserError, match="is a folder"):
        configfile.read_options(tmp_path)


def test_written_settings_read_back_as_the_same_configs(tmp_path):
    tcfg = TrainConfig(corpus="my texts/a.txt", max_time=30.0, lr=0.01, out=str(tmp_path), seed=7, epochs=None)
    mcfg = ModelConfig(vocab_size=77, hidden=96, layers=2, dropout=0.1)
    path = configfile.write(tmp_path, tcfg, mcfg, precision="bf16")
    text = path.read_text()
    assert text.startswith("# The settings") and "max-time = 30.0" in text and "epochs" not in text  # no TOML null
    options = configfile.read_options(path)
    assert TrainConfig(**{k: v for k, v in options.items() if k in TrainConfig.__dataclass_fields__}) == TrainConfig(
        **{**tcfg.to_dict(), "precision": "bf16"}
    )
    model = {k: v for k, v in options.items() if k in ModelConfig.__dataclass_fields__}
    assert ModelConfig(**model, vocab_size=77) == mcfg and "vocab_size" not in options
