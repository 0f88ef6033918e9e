"""Slots: streams that come and go, stepped together. A stream's numbers are those of the model
(the per-character step's) and do not depend on the other streams, their places or the threads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.net.model import CharLSTM
from charlstm.sampling import slot_kernels
from charlstm.sampling.draw import SamplingRule
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper

CAPACITY = 24


def stepper(cell: str, precision: str, hidden: int = 33) -> Stepper:
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=67, embedding=16, hidden=hidden, layers=2, cell=cell)).eval()
    return Stepper(model, precision)


def one_stream(st: Stepper, others: int, threads: int, tokens: int = 40, calls: int = 2):
    """The ids and final logits of one stream (prompt 1 2 3 4, top-k 5, top-p 0.9) placed after
    ``others`` streams of other prompts and rules; drawn in ``calls`` calls."""
    slots = Slots(st, CAPACITY, threads)
    try:
        for j in range(others):
            slots.add(st.read([j % 60 + 5, 3]), SamplingRule(0.5 + j / 10, j % 4, 1.0))
        me = slots.add(st.read([1, 2, 3, 4]), SamplingRule(1.0, 5, 0.9))
        u = np.full((CAPACITY, tokens * calls), 0.5)
        u[me] = 1.0 - np.random.default_rng(0).random(tokens * calls)
        start = np.zeros(CAPACITY, np.int64)
        ids = []
        for _ in range(calls):
            ids.append(slots.run(u, start, tokens)[me])
            start += tokens
        return np.concatenate(ids), slots.logits[me].copy()
    finally:
        slots.close()


@pytest.mark.parametrize(("cell", "hidden"), [("lstm", 33), ("gru", 33), ("peephole", 33), ("lstm", 128)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stream_is_the_same_whatever_runs_beside_it(cell, hidden, precision):
    """Hidden 128: one stream's products are split between threads."""
    st = stepper(cell, precision, hidden)
    ids, logits = one_stream(st, 0, 1)
    for others, threads in ((3, 1), (7, 2), (18, 3), (CAPACITY - 1, 2)):
        other_ids, other_logits = one_stream(st, others, threads)
        assert np.array_equal(ids, other_ids) and np.array_equal(logits, other_logits), (others, threads)
    # how many calls the tokens come in does not matter either
    in_one = one_stream(st, 5, 2, tokens=80, calls=1)
    assert np.array_equal(ids, in_one[0]) and np.array_equal(logits, in_one[1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stream_alone_is_stepped_as_a_tile_where_its_own_path_would_differ(precision, monkeypatch):
    """Where the compiler vectorised the row path unlike the tiles, a stream alone is a tile too."""
    st = stepper("lstm", precision, hidden=40)
    expected = one_stream(st, 3, 1)  # in a tile with others
    calls = []
    monkeypatch.setattr(slot_kernels, "run_one", lambda *a: calls.append(1))
    monkeypatch.setattr(st, "rows_match", False)
    got = one_stream(st, 0, 1)
    assert not calls and np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_the_step_is_the_models_own(cell):
    st = stepper(cell, "fp32")
    tokens = [1, 2, 3, 4, 9, 11]
    slots = Slots(st, 8, 2)
    for _ in range(5):
        slots.add(st.read(tokens[:1]), SamplingRule(0.0))
    try:
        ids = slots.run(np.ones((8, 8)), np.zeros(8, np.int64), 5)
    finally:
        slots.close()
    prompt = torch.tensor([tokens[:1] + list(ids[0, :5])])
    logits, _ = st.model(prompt)
    greedy = logits[0, :-1].argmax(-1).tolist()[: len(ids[0])]
    assert ids[0].tolist() == greedy[:5]  # greedy: each id is the model's argmax after the previous ones
    assert np.allclose(slots.logits[0, :67], logits[0, -1].detach().numpy(), atol=1e-4)
    assert (ids == ids[0]).all()  # the same prompt and rule in every place: the same text


def test_removing_a_stream_moves_the_last_one_into_its_place():
    st = stepper("lstm", "fp32")
    slots = Slots(st, 6, 1)
    for j in range(4):
        slots.add(st.read([j + 1]), SamplingRule(0.0))
    before = slots.logits[3].copy()
    assert slots.remove(1) == 3 and slots.count == 3
    assert np.array_equal(slots.logits[1], before)
    assert slots.remove(2) is None and slots.free == 4
    slots.close()


def test_the_state_read_token_by_token_is_the_prompt_read_at_once():
    st = stepper("lstm", "fp32")
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    _, primed = st.prime(torch.tensor([ids]))
    read = st.read(ids)
    assert np.allclose(read.logits, primed.logits, atol=1e-5)
    assert np.allclose(read.xh[:, :, 33:66], primed.xh[:, :, 33:66], atol=1e-6)


def drawn_while_others_leave(st: Stepper, mine: SamplingRule, others: Callable[[int], SamplingRule], count: int,
                             sizes: list[int], leave: list[int]) -> np.ndarray:  # fmt: skip
    """The ids of one stream (prompt 1 2 3 4, its own generator) placed after ``count`` others
    (rule ``others(j)``), drawn in calls of ``sizes`` tokens; after call n the stream in place
    ``leave[n]`` leaves (unless it is this one), and the last one moves into its place."""
    slots = Slots(st, CAPACITY, 1)
    try:
        for j in range(count):
            slots.add(st.read([j + 5, 3]), others(j), np.random.default_rng(100 + j), [j + 5, 3])
        me = slots.add(st.read([1, 2, 3, 4]), mine, np.random.default_rng(7), [1, 2, 3, 4])
        drawn = []
        for n, size in enumerate(sizes):
            drawn.append(slots.draw(size)[me])
            if n < len(leave) and leave[n] < slots.count and leave[n] != me:
                moved = slots.remove(leave[n])
                me = leave[n] if moved == me else me
        return np.concatenate(drawn)
    finally:
        slots.close()


def test_a_stream_draws_its_own_numbers_in_order_wherever_it_moves():
    """``draw``: each stream's uniforms come from its own generator, in order across calls of any
    size; a removal moves a stream with its generator and the uniforms it had drawn ahead."""
    st = stepper("lstm", "fp32")

    rule = SamplingRule(1.0, 5, 0.9)
    others = lambda j: SamplingRule(1.0)  # noqa: E731

    alone = drawn_while_others_leave(st, rule, others, 0, [250, 250], [])
    assert np.array_equal(alone, drawn_while_others_leave(st, rule, others, 6, [37, 256, 7, 200], [0, 2, 1]))
    assert np.array_equal(alone, drawn_while_others_leave(st, rule, others, 3, [1] * 20 + [250, 230], [0]))
    slots = Slots(st, CAPACITY, 1)  # the same numbers, given: the generator's uniforms in order
    try:
        mine = slots.add(st.read([1, 2, 3, 4]), rule)
        u = np.ones((CAPACITY, 500))
        u[mine] = 1.0 - np.random.default_rng(7).random(500)
        assert np.array_equal(alone, slots.run(u, np.zeros(CAPACITY, np.int64), 500)[mine])
        with pytest.raises(ValueError, match="tokens must be in 1..256"):
            slots.draw(257)
    finally:
        slots.close()


def test_a_stream_keeps_its_penalties_bias_and_window_wherever_it_moves():
    """Everything a rule reads besides the logits (the bias, the counts written, the window of
    recent ids) moves with its stream when another leaves."""
    st = stepper("lstm", "fp32")
    mine_rule = SamplingRule(1.0, presence=0.7, frequency=0.3, repetition=1.4, window=9, bias=((5, -100.0), (6, 2.0)))

    def others(j: int) -> SamplingRule:
        return SamplingRule(0.9, presence=-0.5, repetition=0.8, window=3 + j, bias=((j % 60, 1.0),))

    alone = drawn_while_others_leave(st, mine_rule, others, 0, [40] * 6, [])
    assert 5 not in alone.tolist()  # banned
    assert np.array_equal(alone, drawn_while_others_leave(st, mine_rule, others, 5, [40] * 6, [0, 1, 0]))  # moved to 0
    assert np.array_equal(alone, drawn_while_others_leave(st, mine_rule, others, 7, [40] * 6, [2, 0, 3, 1]))
