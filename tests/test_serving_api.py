"""``charlstm serve`` through the real OpenAI client, as users call it: completions, streaming,
n, stop, echo, seeds under concurrency, every error status, the key, metrics, SIGTERM."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import charlstm
from tests.serving import Server

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def server(shared_run):
    s = Server(shared_run, "--max-streams", "16", "--max-tokens", "600", "--max-prompt", "1000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def complete(client, model_id, **kw):
    return client.completions.create(model=model_id, **{"prompt": "KING:", "max_tokens": 40, **kw})


def streamed(client, model_id, **kw):
    """The text of each choice, joined from the stream's chunks, and the finish reasons."""
    texts, finish = {}, {}
    for chunk in complete(client, model_id, stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish


def test_the_model_list_names_the_run_and_its_facts(client, shared_run):
    models = client.models.list().data
    assert [m.id for m in models] == [shared_run.name]
    facts = models[0].model_extra["charlstm"]
    assert facts["hidden"] == 16 and facts["layers"] == 2 and facts["corpus"] == "play.txt"
    vocab = charlstm.load(shared_run / "best.pt").vocab
    assert facts["tokens"] == list(vocab.token_names()) and facts["tokens"][vocab.index["e"]] == "e"  # logit_bias's ids
    assert client.models.retrieve(shared_run.name).id == shared_run.name


def test_a_completion_has_openais_shape_and_its_length(client, model_id):
    r = complete(client, model_id, max_tokens=50, seed=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == model_id
    (choice,) = r.choices
    assert len(choice.text) == 50 and choice.finish_reason == "length" and choice.logprobs is None
    assert r.usage.prompt_tokens == len("KING:") and r.usage.completion_tokens == 50
    assert r.usage.total_tokens == 55


def test_a_stream_gives_exactly_the_text_of_the_same_request(client, model_id):
    whole = complete(client, model_id, max_tokens=300, seed=11, temperature=1.0)
    texts, finish = streamed(client, model_id, max_tokens=300, seed=11, temperature=1.0)
    assert texts == {0: whole.choices[0].text} and finish == {0: "length"}


def test_the_same_seed_gives_the_same_text_and_another_seed_another(client, model_id):
    a, b, c = (complete(client, model_id, seed=s, temperature=1.0).choices[0].text for s in (5, 5, 6))
    assert a == b and a != c


def test_n_and_several_prompts_give_a_choice_each_in_order(client, model_id):
    r = complete(client, model_id, prompt=["KING:", "FOOL:"], n=3, seed=2, temperature=1.0, max_tokens=30)
    assert [c.index for c in r.choices] == list(range(6))
    # each choice of a prompt has its own random numbers (choice i of each prompt: its sample i)
    assert len({c.text for c in r.choices[:3]}) == 3 and len({c.text for c in r.choices[3:]}) == 3
    texts, _ = streamed(client, model_id, prompt=["KING:", "FOOL:"], n=3, seed=2, temperature=1.0, max_tokens=30)
    assert [texts[i] for i in range(6)] == [c.text for c in r.choices]


def test_stop_ends_the_text_before_the_first_stop_sequence(client, model_id):
    full = complete(client, model_id, max_tokens=200, seed=9, temperature=1.0).choices[0].text
    stop = full[60:62]
    expected = full[: full.find(stop)]
    r = complete(client, model_id, max_tokens=200, seed=9, temperature=1.0, stop=[stop, "\x00never"])
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(expected) + len(stop)
    texts, finish = streamed(client, model_id, max_tokens=200, seed=9, temperature=1.0, stop=stop)
    assert texts == {0: expected} and finish == {0: "stop"}


def test_echo_puts_the_prompt_first(client, model_id):
    plain = complete(client, model_id, seed=4).choices[0].text
    echoed = complete(client, model_id, seed=4, echo=True).choices[0].text
    assert echoed == "KING:" + plain
    texts, _ = streamed(client, model_id, seed=4, echo=True)
    assert texts == {0: "KING:" + plain}


def test_greedy_is_temperature_zero_and_top_k_is_taken(client, model_id):
    a = complete(client, model_id, temperature=0).choices[0].text
    b = complete(client, model_id, temperature=0, seed=1).choices[0].text
    assert a == b
    one = complete(client, model_id, temperature=1.0, seed=8, extra_body={"top_k": 1}).choices[0].text
    assert one == a  # the single likeliest character each time: greedy


def test_stream_options_add_a_usage_chunk(client, model_id):
    chunks = list(complete(client, model_id, stream=True, max_tokens=20, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_each_request_gets_its_own_text_whatever_runs_beside_it(client, model_id):
    asks = [dict(prompt=["KING:", "QUEEN:", "FOOL:", ""][i % 4], seed=100 + i, temperature=0.9,
                 max_tokens=120 + 7 * i, stream=bool(i % 2)) for i in range(32)]  # fmt: skip

    def ask(kw):
        if kw["stream"]:
            return streamed(client, model_id, **{k: v for k, v in kw.items() if k != "stream"})[0][0]
        return complete(client, model_id, **kw).choices[0].text

    alone = [ask(kw) for kw in asks]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, asks))
    assert together == alone
    assert len(set(alone)) == 32


def raw(server, method="POST", path="/v1/completions", **kw):
    return httpx.request(method, server.url + path, timeout=30, **kw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 601),
        ("max_tokens", "ten"),
        ("temperature", -0.5),
        ("top_p", 0),
        ("top_p", 1.5),
        ("n", 0),
        ("n", 17),
        ("seed", -3),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("stop", ["a", "x" * 257]),
        ("prompt", "x" * 1001),
        ("prompt", "caf\u00e9"),
        ("prompt", [1, 2, 3]),
        ("logprobs", -1),
        ("logprobs", 10_000),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("repetition_penalty", 0),
        ("min_p", 1.5),
        ("repeat_last_n", 0),
        ("logit_bias", {"99999": 1}),
        ("logit_bias", {"3": 101}),
        ("logit_bias", {"x": 1}),
        ("stream", "yes"),
        ("colour", "red"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_field(client, model_id, field, value):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model_id, prompt="KING:", max_tokens=5, extra_body={field: value})
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == field and error["message"]


def test_nan_temperature_and_bad_json_are_400s(server):
    r = raw(server, content=b'{"prompt": "KING:", "temperature": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = raw(server, content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = raw(server, json=["KING:"])
    assert r.status_code == 400


def test_unknown_paths_methods_models_and_big_bodies(client, server):
    r = raw(server, "GET", "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = raw(server, "GET", "/v1/completions")
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    r = raw(server, json={"prompt": "x" * (1 << 20)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert server.health()["status"] == "ok"


def test_metrics_count_requests_tokens_and_latency(server, client, model_id):
    complete(client, model_id, max_tokens=10)
    raw(server, "GET", "/v2/nothing")
    text = raw(server, "GET", "/metrics").text
    assert 'charlstm_requests_total{status="200"}' in text and 'charlstm_requests_total{status="404"}' in text
    tokens = float(
        next(line.split()[1] for line in text.splitlines() if line.startswith("charlstm_tokens_generated_total"))
    )
    assert tokens >= 10
    assert "charlstm_active_streams" in text and "charlstm_queue_length" in text
    assert "charlstm_time_to_first_token_seconds_bucket" in text and "charlstm_tokens_per_second_bucket" in text


def test_the_page_is_self_contained_and_describes_the_model(server, shared_run):
    r = raw(server, "GET", "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert shared_run.name in page and "Generate" in page and "Stop" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert page.count("<link") == page.count('<link rel="icon" href="data:,">') == 1  # no /favicon.ico asked for


def test_the_key_is_required_when_set_and_compared(shared_run):
    s = Server(shared_run, env={"CHARLSTM_API_KEY": KEY})
    try:
        assert "API key required" in s.output
        good = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model=shared_run.name, prompt="KING:", max_tokens=5).choices[0].text
        for key in ("wrong", KEY + "x", KEY[:-1]):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0).models.list()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/health").status_code == 200  # health and the page stay open
    finally:
        assert s.stop() == 0


def test_a_full_queue_is_a_429_with_retry_after(wide_run):
    s = Server(wide_run, "--max-streams", "1", "--max-queue", "1")
    release = threading.Event()

    def hold(body):  # one stream generating, one waiting in the queue: both kept open until released
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as r:
            release.wait(30)
            return r.status_code

    try:
        slow = {"prompt": "KING:", "max_tokens": 4000, "stream": True}
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(hold, slow) for _ in range(2)]
            deadline = time.monotonic() + 20
            while s.health()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = httpx.post(s.url + "/v1/completions", json={"prompt": "KING:", "max_tokens": 5}, timeout=30)
            release.set()
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert [f.result() for f in held] == [200, 200]
        assert s.wait_idle()["active"] == 0
    finally:
        release.set()
        s.stop()


def _read_stream_start(url, body):
    """Read the first event of a streamed completion, then hang up."""
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    return None


def test_sigterm_ends_the_streams_in_flight_and_exits_0(wide_run):
    s = Server(wide_run, "--max-tokens", "1000000")  # a stream alone runs at tens of thousands of tokens a second
    body = {"prompt": "KING:", "max_tokens": 1000000, "stream": True}
    with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        s.proc.terminate()
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"  # ended cleanly, the last piece saying why: ended by the drain's end,
    assert "shutting down" in rest[-2]  # not run to its 1,000,000 tokens (no wall-clock bound: CI machines are busy)
    assert s.proc.wait(30) == 0
    assert "Traceback" not in s.output


def test_without_the_extra_serve_says_how_to_install_it(shared_run, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from charlstm.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(app, ["serve", str(shared_run)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: serving needs the serve extra (uvicorn is not installed): pip install 'charlstm[serve]'"
    ]


def engine_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "charlstm-engine" and t.is_alive()]


def test_the_app_mounts_in_another_and_owns_its_engine_there(shared_run):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    import charlstm

    before = len(engine_threads())
    inner = charlstm.serve_app(shared_run, max_streams=4)
    assert len(engine_threads()) == before  # nothing runs until the app starts
    outer = Starlette(routes=[Mount("/lm", inner)], lifespan=inner.router.lifespan_context)  # the docs' recipe
    with TestClient(outer) as http:
        assert len(engine_threads()) == before + 1
        r = http.post("/lm/v1/completions", json={"prompt": "KING:", "max_tokens": 12, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 12
        assert http.get("/lm/health").json()["status"] == "ok"
    assert len(engine_threads()) == before  # drained and closed when the outer app stopped

    plain = Starlette(routes=[Mount("/lm", charlstm.serve_app(shared_run, max_streams=4))])  # opens at first use
    with TestClient(plain) as http:
        r = http.post("/lm/v1/completions", json={"prompt": "KING:", "max_tokens": 12, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 12
    plain.routes[0].app.state.service.close()
    assert len(engine_threads()) == before


@pytest.mark.parametrize("failing", ["run", "draw"])  # its kernels, or its first completion
def test_a_model_that_cannot_generate_is_one_line_and_a_non_zero_exit(shared_run, monkeypatch, capfd, failing):
    from typer.testing import CliRunner

    from charlstm.api import serving
    from charlstm.cli import app
    from charlstm.sampling.slots import Slots

    monkeypatch.setattr(serving, "compile_kernels", lambda *a, **k: 0.0)  # they compile through Slots too: loaded later
    monkeypatch.setattr(Slots, failing, lambda *a: (_ for _ in ()).throw(RuntimeError("no kernels here")))
    before = len(engine_threads())
    result = CliRunner().invoke(app, ["serve", str(shared_run), "--host", "127.0.0.1", "--port", "0"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: the model cannot generate here") and "no kernels here" in lines[-1]
    assert "Traceback" not in result.output + capfd.readouterr().err and len(engine_threads()) == before


def test_an_internal_fault_is_a_500_in_openais_shape_and_the_server_goes_on(shared_run, monkeypatch, caplog):
    from starlette.testclient import TestClient

    import charlstm
    from charlstm.sampling.slots import Slots
    from charlstm.serving import app as serving_app

    app = charlstm.serve_app(shared_run, max_streams=4)
    with TestClient(app, raise_server_exceptions=False) as http:
        monkeypatch.setattr(serving_app, "read_completion", lambda *a: 1 / 0)
        r = http.post("/v1/completions", json={"prompt": "KING:"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "ZeroDivisionError" not in r.text and "Traceback" not in r.text
        monkeypatch.undo()

        real_run = Slots.run
        monkeypatch.setattr(Slots, "run", lambda *a: (_ for _ in ()).throw(RuntimeError("a fault")))
        r = http.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 5})
        assert r.status_code == 500 and "server log" in r.json()["error"]["message"]
        events = http.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 5, "stream": True}).text
        assert '"type": "server_error"' in events and events.rstrip().endswith("data: [DONE]")
        monkeypatch.setattr(Slots, "run", real_run)
        r = http.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 5})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 5
        assert http.get("/health").json()["active"] == 0
    assert "generation failed" in caplog.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt": "KING:", "temperature": ' + b"9" * 400 + b"}", "temperature"),  # an int too large for a float
        (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),  # nested past the parser's depth
        (b'{"prompt": "KING:\\ud800"}', "prompt"),  # a lone surrogate
        (b'{"prompt": ["KING:", "FOOL:"], "n": 9}', "prompt"),  # 18 choices, 16 places
        (b'{"prompt": "KING:", "stream_options": {"include_usage": true}}', "stream_options"),
        (b'{"prompt": "KING:", "model": 3}', "model"),
        (b'{"prompt": "KING:", "n": 2.5}', "n"),
        (b'{"prompt": "KING:", "max_tokens": true}', "max_tokens"),
        (b'{"prompt": []}', "prompt"),
        (b'{"prompt": "KING:", "stop": ["a", 3]}', "stop"),
    ],
)
def test_odd_bodies_are_400s_not_faults(server, body, param):
    r = raw(server, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_request_fields_are_the_sampling_options():
    from charlstm.config import SampleConfig
    from charlstm.options import declared
    from charlstm.serving.requests import SAMPLING_FIELDS

    names = {d.name for d in declared(SampleConfig)}
    assert set(SAMPLING_FIELDS.values()) <= names
    # the server's own; and the command line's forms of logit_bias keyed by characters
    assert {"prompt", "unknown", "precision", "ban", "bias"} == names - set(SAMPLING_FIELDS.values())


def generated(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("charlstm_tokens_generated")))


def test_a_streaming_client_that_hangs_up_frees_its_place_at_once(wide_run):
    s = Server(wide_run, "--quiet")
    try:
        before = generated(s)  # the warm-up's
        first = _read_stream_start(s.url, {"prompt": "KING:", "max_tokens": 4096, "stream": True})
        assert first["choices"][0]["index"] == 0
        assert s.wait_idle(60)["active"] == 0
        # Counted, not timed: the completion left the engine long before its 4,096 tokens (within
        # 0.1 s of the hang-up: some hundreds of tokens of this model on a fast machine).
        assert generated(s) - before < 4096 / 2
    finally:
        s.stop()


def test_the_start_line_says_the_model_and_the_key_and_warns_on_an_open_host(monkeypatch, shared_run):
    from typer.testing import CliRunner

    from charlstm import api
    from charlstm.cli import app

    card = {"id": "run", "corpus": "play.txt", "cell": "lstm", "layers": 2, "hidden": 16, "params": 4790,
            "val_loss": 1.25, "key_required": False}  # fmt: skip

    def fake_serve(checkpoint, *, on_start, **options):  # no socket: 0.0.0.0 is never bound in tests
        address = socket.getaddrinfo(options["host"].strip("[]"), None)[0][4][0]  # what binding would use
        on_start(f"http://[{address}]:8000" if ":" in address else f"http://{address}:8000", card)

    monkeypatch.setattr(api, "serve", fake_serve)
    out = CliRunner().invoke(app, ["serve", str(shared_run), "--host", "0.0.0.0"]).output
    assert "serving run (play.txt, lstm 2x16, 4,790 parameters, val loss 1.2500) at http://0.0.0.0:8000" in out
    assert "no API key" in out and "warning: listening on 0.0.0.0 without an API key" in out
    out = CliRunner().invoke(app, ["serve", str(shared_run)]).output
    assert "warning" not in out
    for host in ("::1", "[::1]", "127.0.0.2", "127.255.255.254", "::ffff:127.0.0.1", "localhost"):  # loopback
        out = CliRunner().invoke(app, ["serve", str(shared_run), "--host", host]).output
        assert "serving run" in out and "warning" not in out, (host, out)
    for host in ("::", "0.0.0.0", "192.168.1.5", "2001:db8::1"):  # every interface, or another machine's
        out = CliRunner().invoke(app, ["serve", str(shared_run), "--host", host]).output
        assert f"warning: listening on {host} without an API key" in out, (host, out)


def test_loopback_is_decided_on_the_bound_address():
    from charlstm.cli.serving import loopback

    for url in ("http://127.0.0.1:1", "http://127.9.8.7:1", "http://[::1]:1", "http://[::ffff:127.0.0.1]:1"):
        assert loopback(url), url
    for url in ("http://0.0.0.0:1", "http://[::]:1", "http://10.0.0.2:1", "http://[2001:db8::1]:1", "http://box:1"):
        assert not loopback(url), url


def test_an_export_served_in_bf16_is_named_after_its_file():
    from tests.conftest import FIXTURES

    s = Server(FIXTURES / "v3" / "v3_export.safetensors", "--precision", "bf16", "--quiet")
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        (model,) = client.models.list().data
        assert model.id == "v3_export" and model.model_extra["charlstm"]["precision"] == "bf16"
        a, b = (
            client.completions.create(model=model.id, prompt="", max_tokens=30, seed=2).choices[0].text for _ in "ab"
        )
        assert len(a) == 30 and a == b
    finally:
        assert s.stop() == 0


def test_the_scores_a_request_may_ask_for_count_every_choice():
    from charlstm.config import ServeConfig
    from charlstm.data.vocab import CharVocab
    from charlstm.serving.requests import MAX_SCORED, ApiError, read_completion

    vocab, limits = CharVocab("ab\n"), ServeConfig(max_tokens=10**6, max_streams=64)
    per_choice = MAX_SCORED // 4 // 2  # (tokens) x (logprobs 3 + 1) x 2 choices is just the limit
    ok = {"prompt": "a", "max_tokens": per_choice - 1, "logprobs": 3, "echo": True}
    assert read_completion({**ok, "n": 2}, vocab, limits, "m").choices == 2
    for more in ({"n": 3}, {"prompt": ["a", "b", "a"]}, {"n": 2, "max_tokens": per_choice}):
        with pytest.raises(ApiError) as caught:
            read_completion({**ok, **more}, vocab, limits, "m")
        assert caught.value.status == 400 and caught.value.param == "logprobs"
