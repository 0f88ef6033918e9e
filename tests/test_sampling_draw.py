import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charlstm.config import ModelConfig, SampleConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.sampling import draw as sampling
from charlstm.sampling.draw import SamplingRule, draw_samples, prepare_prompt, priming_ids
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper

VOCAB = CharVocab("\nabcdefgh:ABC ")
with torch.random.fork_rng(devices=[]):  # importing the tests must not move the random state
    torch.manual_seed(0)
    MODEL = CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=8, hidden=24, layers=3, dropout=0.2)).eval()


def texts(cfg: SampleConfig, precision: str = "fp32", start=None) -> list[str]:
    """Every sample of ``cfg`` in full (pieces joined)."""
    samples = draw_samples(Stepper(MODEL, precision), VOCAB, cfg, start)
    whole = [""] * cfg.num_samples
    for pieces in samples.pieces:
        assert len(pieces) == cfg.num_samples and all(len(p) <= sampling.PIECE_TOKENS for p in pieces)
        whole = [w + p for w, p in zip(whole, pieces, strict=True)]
    return whole


def test_same_seed_same_text_and_different_seeds_differ():
    def draw(seed):
        return texts(SampleConfig(prompt="ab", length=80, temperature=1.0, seed=seed))[0]

    assert draw(3) == draw(3) and draw(3) != draw(4) and len(draw(5)) == 80


def test_temperature_zero_is_greedy():
    text = texts(SampleConfig(prompt="abc", length=20, temperature=0.0, seed=0))[0]
    ids = priming_ids(VOCAB, "abc")
    for _ in range(20):
        logits, _ = MODEL(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert text == VOCAB.decode(ids[-20:])


@pytest.mark.parametrize("rule, seeded", [({"temperature": 0.0}, False), ({"top_k": 1}, False), ({}, True)])
def test_samples_say_whether_the_seed_decides_the_text(rule, seeded):
    """Greedy rules draw the likeliest character whatever the seed: nobody is told to keep one."""
    samples = draw_samples(Stepper(MODEL), VOCAB, SampleConfig(prompt="a", length=10, **rule))
    assert samples.seeded is seeded
    if not seeded:
        again = draw_samples(Stepper(MODEL), VOCAB, SampleConfig(prompt="a", length=10, seed=samples.seed + 1, **rule))
        assert list(samples.pieces) == list(again.pieces)


def test_many_samples_side_by_side_in_chunks(monkeypatch):
    monkeypatch.setattr(sampling, "PIECE_TOKENS", 7)  # several chunks, and a short last one
    cfg = SampleConfig(prompt="A", length=30, num_samples=4, seed=1)
    many = texts(cfg)
    assert [len(t) for t in many] == [30] * 4 and len(set(many)) == 4
    assert many == texts(cfg) and texts(SampleConfig(prompt="A", length=30, seed=1))[0] != many[1]
    for n in (1, 2, 7):  # sample i does not depend on how many are drawn beside it
        assert texts(SampleConfig(prompt="A", length=30, num_samples=n, seed=1))[:4] == many[:n]


def test_a_random_seed_is_chosen_and_known_before_any_text_is_drawn(monkeypatch):
    drawn = []
    real = Slots.draw
    monkeypatch.setattr(Slots, "draw", lambda self, *a, **k: drawn.append(1) or real(self, *a, **k))
    samples = draw_samples(Stepper(MODEL), VOCAB, SampleConfig(prompt="a", length=10))
    assert 0 <= samples.seed < 2**32 and samples.prompt == "a" and not drawn
    again = draw_samples(Stepper(MODEL), VOCAB, SampleConfig(prompt="a", length=10, seed=samples.seed))
    assert list(samples.pieces) == list(again.pieces) and drawn


def test_a_top_k_past_the_vocabulary_keeps_every_character():
    assert SamplingRule(1.0, top_k=10**20).args()[:3] == (1.0, 1 << 31, 1.0)
    assert SamplingRule(0.5, top_p=0.9).args()[:3] == (0.5, 0, 0.9)


def test_prompt_with_unknown_characters():
    with pytest.raises(UserError, match="'é'.*--unknown skip"):
        prepare_prompt(VOCAB, "abé", "error")
    assert prepare_prompt(VOCAB, "abé", "skip") == ("ab", ["é"])
    samples = draw_samples(Stepper(MODEL), VOCAB, SampleConfig(prompt="aé", length=3, unknown="skip", seed=0))
    assert samples.prompt == "a" and samples.dropped == ["é"]


def test_empty_prompt_and_zero_length():
    assert texts(SampleConfig(prompt="", length=0, seed=0)) == [""]
    assert len(texts(SampleConfig(prompt="", length=7, seed=0))[0]) == 7
    assert priming_ids(VOCAB, "") == [VOCAB.index["\n"]] and priming_ids(CharVocab("ab"), "") == [0]


def test_a_warm_start_changes_the_text():
    g = torch.Generator().manual_seed(1)
    h0, c0 = torch.randn(3, 1, 24, generator=g) * 3, torch.randn(3, 1, 24, generator=g) * 3  # (layers, 1, H)
    cold = texts(SampleConfig(prompt="ab", length=30, temperature=0.0))[0]
    assert texts(SampleConfig(prompt="ab", length=30, temperature=0.0), start=(h0, c0))[0] != cold


def test_compiling_ahead_leaves_the_random_state_alone():
    before = torch.get_rng_state()
    sampling.compile_kernels()
    assert torch.equal(before, torch.get_rng_state())


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(alphabet="\nabcdefgh ", max_size=10),
    length=st.integers(0, 30),
    temperature=st.one_of(st.just(0.0), st.floats(1e-3, 100.0)),
    top_k=st.one_of(st.none(), st.integers(0, 20)),
    top_p=st.one_of(st.none(), st.floats(1e-6, 1.0)),
    seed=st.integers(0, 2**31),
    num_samples=st.integers(1, 3),
    precision=st.sampled_from(["fp32", "bf16"]),
    controls=st.fixed_dictionaries(
        {},
        optional={
            "min_p": st.floats(0.0, 1.0),
            "presence_penalty": st.floats(-2.0, 2.0),
            "frequency_penalty": st.floats(-2.0, 2.0),
            "repetition_penalty": st.floats(1e-3, 10.0),
            "repetition_window": st.integers(1, 100),
            "ban": st.text(alphabet="abcdefgh", max_size=3),
            "bias": st.lists(st.tuples(st.sampled_from("abc "), st.floats(-100, 100)), max_size=3).map(
                lambda pairs: ",".join(f"{c}={v}" for c, v in pairs)
            ),
        },
    ),
)
def test_any_valid_sampling_options_work(
    prompt, length, temperature, top_k, top_p, seed, num_samples, precision, controls
):
    cfg = SampleConfig(prompt=prompt, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       num_samples=num_samples, **controls)  # fmt: skip
    banned = set(controls.get("ban", ""))
    for text in texts(cfg, precision):
        assert len(text) == length and set(text) <= set(VOCAB.chars) - banned


def test_with_byte_fallback_any_prompt_is_read_and_the_text_is_whole_characters():
    vocab = CharVocab("\nab ", byte_fallback=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=8, hidden=16, layers=1)).eval()
    samples = draw_samples(Stepper(model), vocab, SampleConfig(prompt="a☃b", length=300, temperature=2.0, seed=1))
    assert samples.prompt == "a☃b" and samples.dropped == []
    text = "".join(pieces[0] for pieces in samples.pieces)
    written = text.replace("\ufffd", "")  # what the model wrote as whole characters
    assert 0 < len(text) <= 300 and len(vocab.encode(written)) <= 300  # 300 tokens, decoded into characters
    assert any(ord(c) > 127 for c in written)  # hot sampling from random weights writes bytes of other characters


def test_a_slow_compile_is_announced_once_and_a_quick_one_never(monkeypatch):
    calls = []
    monkeypatch.setattr(sampling, "COMPILE_PATIENCE", 0.05)
    monkeypatch.setattr(sampling, "_compile", lambda: time.sleep(0.3))
    assert sampling.compile_kernels(on_slow=lambda: calls.append("slow")) >= 0.3 and calls == ["slow"]
    monkeypatch.setattr(sampling, "_compile", lambda: None)
    sampling.compile_kernels(on_slow=lambda: calls.append("quick"))
    assert calls == ["slow"]


def test_a_compile_that_fails_raises_in_the_callers_thread(monkeypatch):
    def broken():
        raise RuntimeError("no LLVM")

    monkeypatch.setattr(sampling, "_compile", broken)
    with pytest.raises(RuntimeError, match="no LLVM"):
        sampling.compile_kernels(on_slow=lambda: None)
