import html.parser
import math

import numpy as np
import pytest
import torch
from conftest import play_text

from charlstm.config import ExplainConfig, ModelConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.insight import explain
from charlstm.net.model import CharLSTM
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.evaluate import evaluate

TEXT = 'KING:\nThe (quiet) "word" of my lord.\n\nQUEEN LEAR:\nAnd [so] it is.\n'


def feature(name: str, text: str = TEXT) -> np.ndarray:
    return explain.text_features(text)[name]


def marked(text: str, values: np.ndarray) -> str:
    """The characters where a boolean feature holds, as one string."""
    return "".join(c for c, v in zip(text, values, strict=True) if v)


def test_features_mark_the_right_characters():
    assert marked(TEXT, feature("inside quotes")) == '"word'
    assert marked(TEXT, feature("inside brackets")) == "(quiet[so"
    assert marked(TEXT, feature("line of capitals")) == "KING:\nQUEEN LEAR:\n"
    assert marked(TEXT, feature("after a newline")) == "T\nQA"
    assert marked(TEXT, feature("start of a word")) == "KTqwomlQLAsii"
    position = feature("position in the line")
    assert position[:6].tolist() == [1, 2, 3, 4, 5, 0]  # "KING:" then its newline
    assert position[6] == 1


def test_features_of_odd_text():
    assert marked("a)b(c", feature("inside brackets", "a)b(c")) == "(c"  # an unopened ")" leaves depth at 0
    assert marked("I\nAB\n", feature("line of capitals", "I\nAB\n")) == "AB\n"  # one letter is not a line of capitals
    assert feature("position in the line", "x😀y").tolist() == [1, 2, 3]  # characters, not UTF-16 units


def planted(n: int = 4000, cells: int = 64, column: int = 37, noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Random activations (n, cells) with one column that follows a feature of the play text."""
    text = play_text(n, seed=3)
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, size=(n, cells)).astype(np.float32)
    line_start = feature("after a newline", text)
    values[:, column] = -0.8 * line_start + noise * rng.standard_normal(n)
    return text, values


def test_search_finds_a_planted_cell_with_its_correlation():
    text, values = planted()
    found, absent = explain.best_cells(values, explain.text_features(text))
    by_feature = {f.feature: f for f in found}
    expected = np.corrcoef(values[:, 37], feature("after a newline", text))[0, 1]
    assert by_feature["after a newline"].cell == 37
    assert by_feature["after a newline"].r == pytest.approx(expected, abs=1e-6)
    assert expected < -0.5
    assert set(absent) == {"inside quotes", "inside brackets"}  # the play has neither


def test_correlations_match_numpy_and_survive_constant_columns():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((500, 6)).astype(np.float32)
    values[:, 2] = 0.25  # a dead cell
    features = np.stack([rng.standard_normal(500), np.ones(500), rng.integers(0, 2, 500)], axis=1)
    r = explain.correlations(values, features)  # (3, 6)
    assert r.shape == (3, 6)
    assert r[0, 0] == pytest.approx(np.corrcoef(values[:, 0], features[:, 0])[0, 1], abs=1e-6)
    assert r[2, 5] == pytest.approx(np.corrcoef(values[:, 5], features[:, 2])[0, 1], abs=1e-6)
    assert r[0, 2] == 0 and r[2, 2] == 0
    assert np.isnan(r[1]).all()


def test_cells_to_show_puts_feature_cells_first_then_the_most_varied():
    values = np.zeros((10, 5))
    values[:, 4] = np.linspace(-1, 1, 10)  # the widest spread
    values[:, 1] = np.linspace(0, 0.5, 10)
    found = [explain.Found("a", 3, 0.9), explain.Found("b", 3, 0.7), explain.Found("c", 0, 0.6)]
    assert explain.cells_to_show(found, values, 6) == [3, 0, 4, 1, 2]  # only 5 cells exist
    assert explain.cells_to_show(found, values, 3) == [3, 0, 4]
    assert explain.cells_to_show(found, values, 1) == [3]


CELLS_AND_VALUES = [
    ("lstm", "cell"),
    ("lstm", "hidden"),
    ("gru", "hidden"),
    ("peephole", "cell"),
    ("peephole", "hidden"),
]


@pytest.mark.parametrize("cell, value", CELLS_AND_VALUES)
def test_reading_matches_the_model_over_the_whole_chunk(cell, value):
    torch.manual_seed(0)
    text = play_text(120, seed=1)
    vocab = CharVocab(text)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=8, hidden=16, layers=2, cell=cell)).eval()
    pieces = explain.char_tokens(vocab, text, "the text")
    reading = explain.read_through(model, pieces, text, value, None)
    tokens = torch.tensor(vocab.encode(text))[None]  # (1, N)
    with torch.no_grad():
        logits, state = model(tokens)
        top_out, _ = model.rnn(model.embed(tokens.t()))  # (N, 1, H): the last layer's hidden output
    last = torch.tanh(state[1]) if value == "cell" else state[0]  # (layers, 1, H)
    assert reading.values.shape == (len(text), 32)
    np.testing.assert_allclose(reading.values[-1], last.flatten().numpy(), atol=1e-5)
    if value == "hidden":
        np.testing.assert_allclose(reading.values[:, 16:], top_out[:, 0].numpy(), atol=1e-5)
    probs = torch.softmax(logits[0], dim=1)  # (N, V)
    np.testing.assert_array_equal(reading.top_ids[:, 0], probs.argmax(dim=1).numpy())
    np.testing.assert_allclose(reading.top_probs[:, 0], probs.max(dim=1).values.numpy(), atol=1e-5)
    assert (np.diff(reading.top_probs, axis=1) <= 0).all()


def test_losses_are_per_character_and_agree_with_evaluation():
    torch.manual_seed(0)
    text = "naïve café — 😀 déjà vu\n" * 4  # several characters as two to four byte tokens
    vocab = CharVocab("abcdefinuv \n", byte_fallback=True)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=8, hidden=16)).eval()
    reading = explain.read_through(model, explain.char_tokens(vocab, text, "the text"), text, "cell", None)
    assert reading.values.shape[0] == len(text) and math.isnan(reading.next_loss[-1])
    measured = evaluate(model, np.array(vocab.encode(text)), char_starts=vocab.char_starts())
    assert measured.chars == len(text) - 1
    assert float(np.mean(reading.next_loss[:-1])) == pytest.approx(measured.loss, rel=1e-5)


def test_value_and_cell_checks():
    assert explain.resolve_value(None, "lstm") == "cell"
    assert explain.resolve_value(None, "gru") == "hidden"
    assert explain.resolve_value("hidden", "peephole") == "hidden"
    with pytest.raises(UserError, match="GRU"):
        explain.resolve_value("cell", "gru")


def test_token_labels():
    vocab = CharVocab("ab \n", byte_fallback=True)
    assert [explain.token_label(vocab, i) for i in range(4)] == ["\u21b5", "\u2423", "a", "b"]
    assert explain.token_label(vocab, len(vocab) - 1) == "<FF>"


class Counter(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self.blocks, self.depth, self.text = 0, 0, 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "div" and ("class", "text") in attrs:
            self.blocks += 1
        if tag == "span" and any(k == "class" and v.startswith("q") for k, v in attrs):
            self.spans += 1


def test_explain_a_checkpoint_writes_a_page(shared_run, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(play_text(3000, seed=7), encoding="utf-8")
    out = tmp_path / "page.html"
    report = explain.explain_checkpoint(shared_run, ExplainConfig(str(text_file), str(out), chars=1000, cells=4))
    assert report.chars == 1000 and len(report.cells) == 4 and report.value == "cell"
    assert {f.feature for f in report.found} == {
        "position in the line",
        "line of capitals",
        "start of a word",
        "after a newline",
    }
    assert report.cells[0] == report.found[0].cell and report.page_bytes == out.stat().st_size
    assert out.stat().st_mode & 0o777 == 0o644
    parser = Counter()
    parser.feed(out.read_text(encoding="utf-8"))
    assert parser.blocks == 4 and parser.spans == 4 * 1000 + explain.page.LEVELS  # the scale's swatches too


def test_chosen_cells_and_their_checks(shared_run, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(play_text(500, seed=7), encoding="utf-8")
    out = str(tmp_path / "page.html")
    report = explain.explain_checkpoint(shared_run, ExplainConfig(str(text_file), out, cell_ids="31,0,31"))
    assert report.cells == [31, 0]
    mcfg = load_checkpoint(shared_run).model_config
    with pytest.raises(UserError, match=f"--cell-ids 32 .*from 0 to {mcfg.layers * mcfg.hidden - 1}"):
        explain.explain_checkpoint(shared_run, ExplainConfig(str(text_file), out, cell_ids="3,32", overwrite=True))


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        ("KING ☃ and ❄\n", "characters the model never saw: '☃', '❄'"),
        ("K", "has 1 characters, expected at least 2"),
        (b"\xff\xfe bad", "cannot be read as utf-8"),
    ],
)
def test_texts_it_cannot_read(shared_run, tmp_path, content, needle):
    text_file = tmp_path / "text.txt"
    if isinstance(content, bytes):
        text_file.write_bytes(content)
    elif content is not None:
        text_file.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=needle):
        explain.explain_checkpoint(shared_run, ExplainConfig(str(text_file), str(tmp_path / "page.html")))
    assert not (tmp_path / "page.html").exists()


def test_a_page_that_cannot_be_written(shared_run, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(play_text(200), encoding="utf-8")
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write to .*expected a writable folder"):
        explain.explain_checkpoint(shared_run, ExplainConfig(str(text_file), str(tmp_path / "blocker" / "page.html")))
