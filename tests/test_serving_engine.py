"""The serving engine on its own, over a scripted stand-in for the slots and their stepper: each
prompt's stream writes the text its script gives, a few tokens a call, so that stops, faults,
cancellation and closing can be set up exactly. The matcher of stop sequences on its own first."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from charlstm.choices import FinishReason
from charlstm.data.vocab import CharVocab
from charlstm.sampling.draw import SamplingRule
from charlstm.serving import engine as engine_module
from charlstm.serving.engine import INTERNAL, SHUTTING_DOWN, Engine, Job, Piece, Prompt
from charlstm.serving.stops import StopMatcher

VOCAB = CharVocab.from_counts(dict.fromkeys("\nabcdxyzSTOP!", 1), 64, byte_fallback="on")  # é and 東 as bytes
SECONDS_A_TOKEN = 0.004  # the stand-in's pace: the engine then asks for about 3 tokens a call


def matched(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool, int]:
    """The certain text, whether it stopped, and after how many pieces."""
    matcher, out = StopMatcher(stops), []
    for n, piece in enumerate(pieces, 1):
        fed = matcher.feed(piece)
        out.append(fed.text)
        if fed.stopped:
            return "".join(out), True, n
    return "".join(out) + matcher.finish(), False, len(pieces)


def test_a_stop_is_found_however_the_text_arrives_and_the_earliest_to_complete_ends_it():
    for pieces in (["abcST", "OPdef"], list("abcSTOPdef"), ["abcSTOPdef"], ["ab", "cS", "T", "OPd"]):
        assert matched(("STOP",), pieces)[:2] == ("abc", True)
    assert matched(("aab",), list("aaab")) == ("a", True, 4)  # a stop that overlaps itself
    assert matched(("abcd", "bc"), list("xabcdy")) == ("xa", True, 4)  # overlapping stops: the first to complete
    assert matched(("abcd", "bcz"), list("xabcd")) == ("x", True, 5)
    assert matched(("STOP",), ["abcST"]) == ("abcST", False, 1)  # ended by its length: what was held is text
    matcher = StopMatcher(("STOP", "xyz"))
    assert matcher.feed("abST").text == "ab" and matcher.held == "ST"  # held back: could begin a stop
    assert matcher.feed("A").text == "STA" and matcher.held == ""
    assert StopMatcher(()).feed("STOP") == StopMatcher(("",)).feed("STOP")  # no stops: all certain at once


@dataclass
class Stream:
    script: list[int]
    prompt: str
    at: int = 0


@dataclass
class Scripted:
    """Slots and their stepper in one: a stream primed on PROMPT writes ``scripts[PROMPT]`` (then
    "z" for ever), whatever its rule and random numbers; ``calls`` holds each call's prompts."""

    capacity: int
    scripts: dict[str, str | list[int]]  # text, or ids
    failing_prompts: tuple[str, ...] = ()
    failing_calls: tuple[int, ...] = ()  # the calls to ``draw`` (counted from 1) that raise
    gate: threading.Event = field(default_factory=threading.Event)  # draws wait for it (set unless a test clears it)
    streams: list[Stream] = field(default_factory=list)
    calls: list[tuple[list[str], int]] = field(default_factory=list)  # each call's prompts and tokens

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def stepper(self) -> Scripted:
        return self

    @property
    def count(self) -> int:
        return len(self.streams)

    @property
    def free(self) -> int:
        return self.capacity - self.count

    def start(self, ids: list[int], state: object) -> str:
        prompt = VOCAB.decoder()(ids).lstrip("\n")
        if prompt in self.failing_prompts:
            raise RuntimeError(f"cannot read {prompt!r}")
        return prompt

    def add(self, primed: str, rule: SamplingRule, rng: np.random.Generator | None = None, read: object = ()) -> int:
        assert self.free
        script = self.scripts.get(primed, "")
        self.streams.append(Stream(VOCAB.encode(script) if isinstance(script, str) else script, primed))
        return self.count - 1

    def remove(self, i: int) -> int | None:
        last = self.count - 1
        self.streams[i] = self.streams[last]
        self.streams.pop()
        return None if i == last else last

    def clear(self) -> None:
        self.streams.clear()

    def close(self) -> None:
        pass

    def run(self, u: np.ndarray, start: np.ndarray, tokens: int) -> np.ndarray:  # the engine's warm-up
        time.sleep(tokens * SECONDS_A_TOKEN)
        return np.zeros((self.count, tokens), np.int64)

    def draw(self, tokens: int) -> np.ndarray:
        self.gate.wait(10)
        self.calls.append(([s.prompt for s in self.streams], tokens))
        if len(self.calls) in self.failing_calls:
            raise RuntimeError("the step failed")
        time.sleep(tokens * SECONDS_A_TOKEN)
        filler = VOCAB.encode("z")[0]
        out = np.empty((self.count, tokens), np.int64)
        for row, s in zip(out, self.streams, strict=True):
            row[:] = (s.script[s.at : s.at + tokens] + [filler] * tokens)[:tokens]
            s.at += tokens
        return out


@dataclass
class Receiver:
    """What one job was handed, piece by piece; ``done`` once its last piece came."""

    pieces: list[Piece] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    raises: bool = False

    def __call__(self, piece: Piece) -> None:
        self.pieces.append(piece)
        if piece.finish is not None or piece.error is not None:
            self.done.set()
        if self.raises:
            raise ConnectionError("the client went away")

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def last(self) -> Piece:
        assert self.done.wait(10), "no last piece"
        return self.pieces[-1]


def started(slots: Scripted, max_queue: int = 8, meter: engine_module.Meter | None = None) -> Engine:
    engine = Engine(slots, VOCAB, None, max_queue, meter)  # type: ignore[arg-type]
    engine.start()
    return engine


def job(prompt: str, receiver: Receiver, max_tokens: int = 40, stops: tuple[str, ...] = ()) -> Job:
    ids = VOCAB.encode("\n" + prompt)
    return Job(0, Prompt(ids), SamplingRule(1.0), 7, max_tokens, stops, receiver)


@pytest.fixture
def engines():
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.close()
        assert not engine._thread.is_alive()


def test_a_stop_across_calls_and_deliveries_ends_the_job_in_that_call_with_its_tokens_counted(engines, monkeypatch):
    monkeypatch.setattr(engine_module, "FLUSH_SECONDS", 0.03)  # deliveries every few calls
    slots = Scripted(2, {"a": "abcdabcdabcdabcdxSTOPyyyyyyyyy", "b": "b" * 60})
    engines.append(engine := started(slots))
    one, two = Receiver(), Receiver()
    engine.submit([job("a", one, stops=("STOP",)), job("b", two, max_tokens=60)])
    assert one.last.finish == FinishReason.STOP and one.last.tokens == len("abcdabcdabcdabcdxSTOP")
    assert one.text == "abcdabcdabcdabcdx" and len(one.pieces) >= 2  # its first token went out at once
    assert all("S" not in p.text for p in one.pieces)  # held back until it was known to be a stop
    with_a = [tokens for prompts, tokens in slots.calls if "a" in prompts]
    assert sum(with_a) - with_a[-1] < one.last.tokens <= sum(with_a)  # it left its slot in the call that stopped it
    assert len(with_a) > 2 and len(slots.calls) > len(with_a)  # several calls, and "b" went on after
    assert two.last.finish == FinishReason.LENGTH and two.text == "b" * 60 and two.last.tokens == 60


def test_a_stop_inside_a_character_written_in_bytes(engines):
    assert len(VOCAB.encode("é")) == 2 and len(VOCAB.encode("東")) == 3
    engines.append(engine := started(Scripted(1, {"a": "ab東xé!aé", "b": "ab東xéyy"})))
    one, two = Receiver(), Receiver()
    engine.submit([job("a", one, stops=("é!",))])
    assert one.last.finish == FinishReason.STOP and one.text == "ab東x"
    assert one.last.tokens == len(VOCAB.encode("ab東xé!"))
    engine.submit([job("b", two, max_tokens=len(VOCAB.encode("ab東xéy")), stops=("東y",))])
    assert two.last.finish == FinishReason.LENGTH and two.text == "ab東xéy"


def test_a_job_cancelled_while_queued_never_runs_and_holds_no_place(engines):
    slots = Scripted(1, {"a": "a" * 300, "b": "b" * 10, "c": "c" * 10})
    engines.append(engine := started(slots, max_queue=1))
    slots.gate.clear()  # "a" holds the only slot until the rest is queued
    first, second, third = Receiver(), Receiver(), Receiver()
    engine.submit([job("a", first, max_tokens=150)])
    queued = job("b", second)
    engine.submit([queued])
    queued.cancelled = True
    engine.submit([job("c", third, max_tokens=10)])  # the queue holds one: the cancelled job's place is free
    slots.gate.set()
    assert third.last.finish == FinishReason.LENGTH and third.text == "c" * 10
    assert first.last.finish == FinishReason.LENGTH and first.text == "a" * 150
    assert second.pieces == [] and all("b" not in prompts for prompts, _ in slots.calls)


def test_a_prompt_that_cannot_be_primed_fails_alone(engines):
    engines.append(engine := started(Scripted(4, {"a": "abc" * 10}, failing_prompts=("boom",))))
    good, bad = Receiver(), Receiver()
    engine.submit([job("boom", bad), job("a", good, max_tokens=30)])
    assert bad.last.error == INTERNAL and bad.text == ""
    assert good.last.finish == FinishReason.LENGTH and good.text == "abc" * 10
    again = Receiver()
    engine.submit([job("a", again, max_tokens=3)])
    assert again.last.finish == FinishReason.LENGTH and again.text == "abc"


def test_a_fault_in_one_jobs_text_ends_that_job_alone(engines):
    broken = [len(VOCAB) + 5] * 40  # ids the vocabulary lacks: decoding them fails
    engines.append(engine := started(Scripted(4, {"a": "abcd" * 10, "b": broken})))
    good, bad = Receiver(), Receiver()
    engine.submit([job("a", good, max_tokens=40), job("b", bad)])
    assert bad.last.error == INTERNAL and bad.text == ""
    assert good.last.finish == FinishReason.LENGTH and good.text == "abcd" * 10


def test_a_fault_of_the_step_ends_the_jobs_in_the_slots_and_the_queue_goes_on(engines):
    slots = Scripted(1, {"a": "a" * 50, "b": "b" * 5}, failing_calls=(3,))
    engines.append(engine := started(slots))
    running, waiting = Receiver(), Receiver()
    engine.submit([job("a", running, max_tokens=50)])
    engine.submit([job("b", waiting, max_tokens=5)])
    assert running.last.error == INTERNAL
    assert waiting.last.finish == FinishReason.LENGTH and waiting.text == "b" * 5


def test_a_delivery_that_raises_ends_its_job_and_frees_its_slot(engines):
    slots = Scripted(1, {"a": "a" * 400, "b": "b" * 8})
    engines.append(engine := started(slots))
    gone, next_one = Receiver(raises=True), Receiver()
    engine.submit([job("a", gone, max_tokens=400)])
    engine.submit([job("b", next_one, max_tokens=8)])  # waits for the only slot
    assert next_one.last.finish == FinishReason.LENGTH and next_one.text == "b" * 8
    assert len(gone.pieces) == 1 and gone.pieces[0].finish is None  # handed one piece, then let go
    assert sum("a" in prompts for prompts, _ in slots.calls) == 1


def test_closing_ends_the_jobs_running_and_queued_and_stops_the_worker():
    engine = started(Scripted(1, {"a": "a" * 10_000}))
    running, queued = Receiver(), Receiver()
    engine.submit([job("a", running, max_tokens=10_000)])
    engine.submit([job("a", queued)])
    deadline = time.monotonic() + 5
    while not running.pieces and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    assert not engine._thread.is_alive() and not engine.running
    assert running.last.error == SHUTTING_DOWN and running.last.tokens > 0
    assert queued.last.error == SHUTTING_DOWN and queued.pieces == [queued.last]
    with pytest.raises(engine_module.Closed):
        engine.submit([job("a", Receiver())])


def test_text_held_back_at_first_goes_out_as_soon_as_it_is_certain(engines, monkeypatch):
    monkeypatch.setattr(engine_module, "FLUSH_SECONDS", 5.0)  # only a first or last piece goes out at once
    engines.append(engine := started(Scripted(1, {"a": "STOxyz" * 10})))
    one = Receiver()
    engine.submit([job("a", one, max_tokens=60, stops=("STOP",))])
    assert one.last.finish == FinishReason.LENGTH and one.text == "STOxyz" * 10
    assert len(one.pieces) == 2 and one.pieces[0].text.startswith("STOx")  # the first call's text was all held


class FailingMeter(engine_module.Meter):
    def __init__(self) -> None:
        self.calls = 0

    def generated(self, tokens: int) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("a fault outside any one job")


def test_a_fault_outside_the_jobs_ends_those_in_the_slots_and_the_worker_goes_on(engines):
    engines.append(engine := started(Scripted(1, {"a": "a" * 60, "b": "b" * 6}), meter=FailingMeter()))
    running, waiting = Receiver(), Receiver()
    engine.submit([job("a", running, max_tokens=60)])
    engine.submit([job("b", waiting, max_tokens=6)])
    assert running.last.error == INTERNAL
    assert waiting.last.finish == FinishReason.LENGTH and waiting.text == "b" * 6
    assert isinstance(engine.last_fault, RuntimeError) and engine.running


def test_logprobs_name_the_tokens_of_the_text_handed_out_a_stops_bytes_left_out():
    """With the real step: each job's scores are its own N, whatever another job asks for, and a
    stop that starts with a character written as bytes takes those bytes' scores with it."""
    import torch

    from charlstm.config import ModelConfig
    from charlstm.net.model import CharLSTM
    from charlstm.sampling.slots import Slots
    from charlstm.sampling.stepper import Stepper

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=8, hidden=16, layers=1)).eval()
    keep = {VOCAB.index["a"], *(int(VOCAB.byte_ids[b]) for b in "é".encode())}
    banned = tuple((t, -100.0) for t in range(len(VOCAB)) if t not in keep)
    slots = Slots(Stepper(model), 4)
    engine = Engine(slots, VOCAB, None, 8)
    engine.start()
    try:
        receivers = [Receiver(), Receiver()]
        rules = [SamplingRule(1.0, bias=banned, logprobs=1), SamplingRule(1.0, logprobs=4)]
        jobs = [Job(i, Prompt(VOCAB.encode("\na")), rule, 3, 200, ("é",) if i == 0 else (), receiver)
                for i, (rule, receiver) in enumerate(zip(rules, receivers, strict=True))]  # fmt: skip
        engine.submit(jobs)
        for receiver, n in zip(receivers, (1, 4), strict=True):
            assert receiver.last.error is None
            scored = [p.logprobs for p in receiver.pieces if p.logprobs is not None]
            tokens = [t for s in scored for t in s.tokens]
            assert all(len(top) == n for s in scored for top in s.top_logprobs)
            names = VOCAB.token_names()
            assert VOCAB.decode([names.index(t) for t in tokens]) == receiver.text
            last_tokens = tokens
        first = [t for p in receivers[0].pieces if p.logprobs is not None for t in p.logprobs.tokens]
        assert receivers[0].last.finish == FinishReason.STOP and "\u00e9" not in receivers[0].text
        assert first[-1] != "bytes:\\xc3"  # the stop's first byte went with the stop
        assert last_tokens
    finally:
        engine.close()
        slots.close()
