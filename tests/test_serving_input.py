"""Values a client may put in a request, however deep or long: each is a 400 whose message shows a
short form of it, and nothing a request carries reaches a traceback in the server's log."""

from __future__ import annotations

import json

import httpx
import pytest

from charlstm.errors import UserError
from charlstm.validate import SHOWN_CHARS, fail, shown
from tests.serving import Server

# JSON's parser takes values nested up to somewhat less than the interpreter's recursion limit
# (1,000), how much less depending on how deep in the stack it is called; a repr of the value,
# called deeper still, overflowed for a window of a few depths just below the parser's limit
# (955 and 956 on Python 3.11 under uvicorn). Every depth around it is tried.
DEPTHS = (*range(900, 1001), 5000)
MESSAGE_CHARS = 300  # the longest message a 400 here may have


def nested(depth: int, opening: bytes = b"[", closing: bytes = b"]") -> bytes:
    return opening * depth + b"0" + closing * depth


def nested_object(depth: int) -> bytes:
    return b'{"a": ' * depth + b"0" + b"}" * depth


@pytest.fixture(scope="module")
def server(shared_run):
    s = Server(shared_run, "--max-streams", "16", "--max-tokens", "600", "--quiet")
    s.http = httpx.Client(base_url=s.url, timeout=30)  # one connection for the thousand requests
    yield s
    s.http.close()
    s.stop()
    assert "Traceback" not in s.output and "Exception in ASGI application" not in s.output, s.output[-3000:]


def post(server, body: bytes) -> httpx.Response:
    return server.http.post("/v1/completions", content=body, headers={"content-type": "application/json"})


def assert_short_400(r: httpx.Response, param: str | None) -> None:
    assert r.status_code == 400, (r.status_code, r.text[:500])
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and len(error["message"]) <= MESSAGE_CHARS, error
    assert error["param"] == param or error["message"] == "the request body is not valid JSON", error


@pytest.mark.parametrize("field", ["seed", "n", "temperature", "max_tokens", "top_p", "top_k"])
def test_a_value_nested_deep_is_a_short_400(server, field):
    for depth in DEPTHS:
        for value in (nested(depth), nested_object(depth)):
            r = post(server, b'{"prompt": "KING:", "' + field.encode() + b'": ' + value + b"}")
            assert_short_400(r, field)


@pytest.mark.parametrize("field", ["stream", "echo", "model", "stop", "prompt", "stream_options", "logprobs"])
def test_other_fields_nested_deep_are_short_400s(server, field):
    for depth in DEPTHS:
        r = post(server, b'{"' + field.encode() + b'": ' + nested(depth) + b"}")
        assert_short_400(r, field)


def test_long_values_and_names_are_shown_cut_short(server):
    long = "x" * 900_000
    for body, param in (
        ({"prompt": "KING:", long: 1}, long[:SHOWN_CHARS]),
        ({"prompt": "KING:", "model": long}, "model"),
        ({"prompt": "KING:", "stream": long}, "stream"),
        ({"prompt": "KING:", "seed": long}, "seed"),
        ({"prompt": "KING:", "temperature": [long[:300_000]] * 3}, "temperature"),
    ):
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
        status = 404 if "model" in body else 400
        assert r.status_code == status and len(r.text) < 1000, (r.status_code, r.text[:300])
        assert r.json()["error"]["param"] == param
    for body in (b'{"\\ud800x": 1}', b'{"prompt": "KING:", "model": "\\udfff"}'):  # lone surrogates
        r = post(server, body)
        assert r.status_code in (400, 404) and r.json()["error"]["param"] in ("\\ud800x", "model"), r.text
    r = httpx.get(server.url + "/v1/models/" + "m" * 60_000, timeout=30)
    assert r.status_code == 404 and len(r.text) < 1000
    r = httpx.get(server.url + "/" + "p" * 60_000, timeout=30)
    assert r.status_code == 404 and len(r.text) < 1000
    assert server.health()["status"] == "ok"


def test_shown_is_repr_for_short_values_and_cut_for_long_or_deep_ones():
    assert [shown(v) for v in (0, -0.5, "auto", None, True, [1, 2], {"a": 1}, (1,))] == [
        "0", "-0.5", "'auto'", "None", "True", "[1, 2]", "{'a': 1}", "(1,)",
    ]  # fmt: skip
    deep: object = 0
    for _ in range(100_000):  # far past the recursion limit
        deep = [deep]
    assert shown(deep) == "[[[...]]]"
    assert shown([1, 2, 3, 4, 5]) == "[1, 2, 3, ...]"
    assert shown("y" * 10**6) == repr("y" * (SHOWN_CHARS // 2)) + "... (1,000,000 characters)"
    assert shown(7**1000).endswith("(846 digits)")
    for value in (deep, "y" * 10**6, 7**1000, list(range(10**5)), {str(i): [deep] * 9 for i in range(9)}):
        assert len(shown(value)) <= SHOWN_CHARS

    class Loop:
        def __repr__(self) -> str:
            return repr(self)

    assert shown(Loop()) == "<Loop>"


def test_a_config_error_shows_the_value_short():
    from charlstm.config import SampleConfig

    deep: object = 0
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UserError) as caught:
        SampleConfig(seed=deep)
    assert str(caught.value) == "--seed [[[...]]] is not valid, expected a whole number from 0 to 9223372036854775807"
    assert str(fail("temperature", "t" * 10**6, "a number")).startswith("--temperature 'tttt")
    assert len(str(fail("temperature", "t" * 10**6, "a number"))) < 120
    json.dumps(str(caught.value))  # plain text
