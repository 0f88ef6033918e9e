"""A seed gives the same text everywhere: ``charlstm sample``, ``Model.generate_many`` and the
server (plain and streamed, ``n`` 1 to 8, alone or among 32 concurrent requests), in fp32 and
bf16; and sample 0 of N is the sample of 1."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from typer.testing import CliRunner

import charlstm
from charlstm.cli import app
from tests.serving import Server

PROMPT, LENGTH, SEED = "KING:", 150, 7
SEPARATOR = "\n" + "-" * 40 + "\n"  # between samples on the command line


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def precision(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def served(shared_run, precision):
    server = Server(shared_run, "--precision", precision, "--max-streams", "16")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield client, client.models.list().data[0].id
    server.stop()


def sampled(run, precision: str, n: int, seed: int = SEED, *extra: str, length: int = LENGTH) -> list[str]:
    """``charlstm sample``'s texts, the prompt taken off."""
    args = ["sample", str(run), "--prompt", PROMPT, "--length", str(length), "--seed", str(seed), *extra]
    result = CliRunner().invoke(app, [*args, "--num-samples", str(n), "--precision", precision])
    assert result.exit_code == 0, result.output
    parts = result.stdout[:-1].split("\n" + SEPARATOR)  # each sample ends with a newline
    assert len(parts) == n and all(p.startswith(PROMPT) for p in parts)
    return [p[len(PROMPT) :] for p in parts]


def completed(served, n: int, stream: bool, seed: int = SEED, length: int = LENGTH, **extra) -> list[str]:
    client, model = served
    ask = dict(model=model, prompt=PROMPT, max_tokens=length, seed=seed, n=n)
    if extra:
        ask["extra_body"] = extra
    if not stream:
        return [c.text for c in sorted(client.completions.create(**ask).choices, key=lambda c: c.index)]
    texts = [""] * n
    for chunk in client.completions.create(**ask, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    return texts


def test_a_seed_gives_the_same_text_through_sample_the_api_and_the_server(shared_run, served, precision):
    eight = sampled(shared_run, precision, 8)
    assert len(set(eight)) == 8 and all(len(t) == LENGTH for t in eight)  # the tiny model writes ASCII
    for n in (1, 3, 8):  # sample i does not depend on how many are drawn
        assert sampled(shared_run, precision, n) == eight[:n]
    model = charlstm.load(shared_run / "best.pt")
    texts = model.generate_many(PROMPT, n=8, length=LENGTH, seed=SEED, precision=precision)
    assert [t[len(PROMPT) :] for t in texts] == eight
    assert model.generate(PROMPT, length=LENGTH, seed=SEED, precision=precision)[len(PROMPT) :] == eight[0]
    for n in (1, 2, 5, 8):
        assert completed(served, n, stream=False) == eight[:n]
        assert completed(served, n, stream=True) == eight[:n]


def test_the_servers_text_holds_under_32_concurrent_requests(shared_run, served, precision):
    seeds = [SEED + i for i in range(32)]
    alone = {seed: sampled(shared_run, precision, 3, seed) for seed in seeds[:4]}  # a few, from the command line
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda i: completed(served, 1 + i % 3, bool(i % 2), seeds[i]), range(32)))
    for i, texts in enumerate(together):
        assert texts == completed(served, len(texts), False, seeds[i])  # the same request alone
        if seeds[i] in alone:
            assert texts == alone[seeds[i]][: len(texts)]


def test_with_penalties_min_p_and_biases_the_text_is_the_same_everywhere(shared_run, served, precision):
    model = charlstm.load(shared_run / "best.pt")
    e = model.vocab.index["e"]
    flags = ["--presence-penalty", "0.4", "--frequency-penalty", "0.2", "--repetition-penalty", "1.3",
             "--repetition-window", "32", "--min-p", "0.02", "--bias", "e=-1.5"]  # fmt: skip
    four = sampled(shared_run, precision, 4, SEED, *flags)
    assert four != sampled(shared_run, precision, 4)[:4]  # the controls change the text
    assert sampled(shared_run, precision, 1, SEED, *flags) == four[:1]
    controls = dict(presence_penalty=0.4, frequency_penalty=0.2, repetition_penalty=1.3, min_p=0.02)
    texts = model.generate_many(PROMPT, n=4, length=LENGTH, seed=SEED, precision=precision, repetition_window=32,
                                bias="e=-1.5", **controls)  # fmt: skip
    assert [t[len(PROMPT) :] for t in texts] == four
    for stream in (False, True):
        got = completed(served, 4, stream, repeat_last_n=32, logit_bias={str(e): -1.5}, **controls)
        assert got == four


def test_a_banned_character_never_appears(shared_run, served, precision):
    plain = "".join(sampled(shared_run, precision, 5, SEED, length=1000))
    commonest = max(set(plain), key=plain.count)
    token = charlstm.load(shared_run / "best.pt").vocab.index[commonest]
    assert plain.count(commonest) > 100
    served_texts = completed(served, 5, False, length=1000, logit_bias={str(token): -100})
    banned = sampled(shared_run, precision, 5, SEED, "--ban", commonest, length=1000)
    assert served_texts == banned  # 5,000 characters each way
    assert sum(map(len, banned)) == 5000 and commonest not in "".join(banned)


def test_logprobs_are_the_same_through_sample_and_the_server_and_name_each_token(shared_run, served, precision):
    client, model = served
    ask = dict(model=model, prompt=PROMPT, max_tokens=60, seed=SEED, logprobs=3)
    whole = client.completions.create(**ask).choices[0]
    scored = whole.logprobs
    assert "".join(scored.tokens) == whole.text and len(scored.token_logprobs) == 60
    assert all(
        len(top) == 3 and max(top.values()) >= lp - 1e-6
        for top, lp in zip(scored.top_logprobs, scored.token_logprobs, strict=True)
    )
    assert scored.text_offset == list(range(60)) and all(lp <= 0 for lp in scored.token_logprobs)
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in client.completions.create(**ask, stream=True):
        for key in streamed:
            streamed[key] += getattr(chunk.choices[0].logprobs, key)
    assert streamed == {key: getattr(scored, key) for key in streamed}
    result = CliRunner().invoke(app, ["sample", str(shared_run), "--prompt", PROMPT, "--length", "60", "--seed",
                                      str(SEED), "--logprobs", "3", "--precision", precision])  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["token"] for line in lines] == scored.tokens and {line["sample"] for line in lines} == {0}
    assert [line["logprob"] for line in lines] == scored.token_logprobs
    assert [line["top_logprobs"] for line in lines] == scored.top_logprobs


def test_a_stop_leaves_its_tokens_out_of_the_logprobs(served):
    client, model = served
    text = client.completions.create(model=model, prompt=PROMPT, max_tokens=80, seed=SEED).choices[0].text
    stop = text[30:33]
    cut = client.completions.create(model=model, prompt=PROMPT, max_tokens=80, seed=SEED, stop=stop, logprobs=1)
    choice = cut.choices[0]
    assert choice.finish_reason == "stop" and "".join(choice.logprobs.tokens) == choice.text == text[: text.index(stop)]


def test_echo_with_max_tokens_0_scores_a_text_as_charlstm_eval_does(shared_run, served):
    """How lm-evaluation-harness measures a model over this API: echo, logprobs, max_tokens 0."""
    client, model = served
    text = (shared_run.parent / "play.txt").read_text(encoding="utf-8")[:2000]
    answer = client.completions.create(model=model, prompt=text, max_tokens=0, echo=True, logprobs=0).choices[0]
    scored = answer.logprobs
    assert answer.text == text and scored.token_logprobs[0] is None and len(scored.token_logprobs) == 2000
    served_loss = -sum(scored.token_logprobs[1:]) / 1999
    loaded = charlstm.load(shared_run / "best.pt")
    evaluated = loaded.evaluate(text).loss
    assert abs(served_loss - evaluated) < 1e-3
    per_char = loaded.score(text)
    assert len(per_char) == 2000 and np.isnan(per_char[0]) and abs(-np.nanmean(per_char) - evaluated) < 1e-3
    assert np.allclose(per_char[1:], scored.token_logprobs[1:], atol=1e-5)  # the same scores, one per character


def test_each_request_gets_its_own_logprobs_and_a_prompt_its_text_wherever_it_is_in_a_list(served):
    client, model = served
    asks = [
        dict(model=model, prompt=PROMPT, max_tokens=50, seed=SEED + i, logprobs=[0, 1, 5][i % 3]) for i in range(12)
    ]
    alone = [client.completions.create(**ask).choices[0].logprobs for ask in asks]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda ask: client.completions.create(**ask).choices[0].logprobs, asks))
    assert together == alone
    assert all(len(top) == ask["logprobs"] for ask, got in zip(asks, alone, strict=True) for top in got.top_logprobs)
    listed = client.completions.create(model=model, prompt=["QUEEN:", PROMPT], max_tokens=LENGTH, seed=SEED, n=2)
    assert [c.text for c in listed.choices[2:]] == completed(served, 2, False)  # choice i of each prompt: sample i
