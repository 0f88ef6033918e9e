"""Property-based tests: any text round-trips, any valid sampling option works, any invalid one
is refused with exit code 2."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charlstm.cli import app
from charlstm.config import ModelConfig
from charlstm.corpus import CharVocab, load_corpus
from charlstm.model import CharLSTM
from charlstm.sample import generate

runner = CliRunner()


@given(st.text(min_size=1, max_size=200))
def test_vocab_round_trips_any_text(text):
    vocab = CharVocab(text)
    assert vocab.decode(vocab.encode(text)) == text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300
    ).filter(lambda t: not t.isspace())
)
def test_corpus_cache_round_trips_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("c") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus = load_corpus(path)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == text


VOCAB = CharVocab("\nabcdefgh ")
torch.manual_seed(0)
MODEL = CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=4, hidden=8, layers=2)).eval()


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(alphabet="\nabcdefgh ", max_size=10),
    length=st.integers(0, 30),
    temperature=st.one_of(st.just(0.0), st.floats(1e-3, 100.0)),
    top_k=st.one_of(st.none(), st.integers(0, 20)),
    top_p=st.one_of(st.none(), st.floats(1e-6, 1.0)),
    seed=st.integers(0, 2**31),
)
def test_any_valid_sampling_options_work(prompt, length, temperature, top_k, top_p, seed):
    rng = np.random.default_rng(seed)
    text = "".join(generate(MODEL, VOCAB, prompt, length, temperature, top_k, top_p, rng))
    assert len(text) == length and set(text) <= set(VOCAB.chars)


bad_values = st.one_of(
    st.tuples(st.just("--temperature"), st.floats(max_value=-1e-9) | st.just(math.nan)),
    st.tuples(st.just("--top-k"), st.integers(max_value=-1)),
    st.tuples(st.just("--top-p"), st.floats(max_value=0.0) | st.floats(min_value=1.0001, allow_infinity=False)),
    st.tuples(st.just("--length"), st.integers(max_value=-1)),
    st.tuples(st.just("--num-samples"), st.integers(max_value=0)),
)


@settings(max_examples=40, deadline=None)
@given(bad_values)
def test_any_invalid_sampling_value_is_refused(option_value):
    option, value = option_value
    result = runner.invoke(app, ["sample", "whatever.pt", option, str(value)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {option} ") and "Traceback" not in result.output
