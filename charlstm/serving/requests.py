"""What a completion request asks for, read and checked as OpenAI's ``/v1/completions`` defines
it, and the errors in OpenAI's shape.

The sampling fields are the sampling options of ``charlstm sample`` (``SampleConfig``) under
OpenAI's names (``max_tokens`` is ``--length``, ``n`` is ``--num-samples``): their defaults and
their checks are those options' own; only this server's limits are added here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from charlstm.config import SampleConfig, ServeConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.options import option
from charlstm.sampling.draw import SamplingRule
from charlstm.validate import SHOWN_CHARS, shown

# OpenAI's name of each sampling option (``top_k``, ``min_p`` and ``repetition_penalty`` are vLLM's and
# llama.cpp's extensions, ``repeat_last_n`` llama.cpp's).
SAMPLING_FIELDS = {
    "max_tokens": "length",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "repeat_last_n": "repetition_window",
    "logit_bias": "logit_bias",
    "logprobs": "logprobs",
    "seed": "seed",
    "n": "num_samples",
}
WHOLE = ("length", "top_k", "seed", "num_samples", "repetition_window", "logprobs")  # a whole float is fine
# Fields OpenAI defines that this server takes only at their neutral value.
NEUTRAL = {"suffix": (None, ""), "best_of": (None, 1)}
OTHER_FIELDS = {"model", "prompt", "stream", "stream_options", "stop", "echo", "user"}
MAX_STOPS = 4  # as OpenAI
MAX_SCORED = 2_000_000  # scores one request may ask for (choices x their tokens x (logprobs + 1)): ~200 MB
T = TypeVar("T")
MAX_STOP_CHARS = 256  # each: matched against the text as it arrives, every token


class ApiError(Exception):
    """An answer other than success, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.kind, self.code, self.headers = status, kind, code, headers or {}
        self.message, self.param = _encodable(message), None if param is None else _encodable(param)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _encodable(text: str) -> str:
    """``text`` with any lone surrogate (a JSON string may hold one; UTF-8 cannot) written as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Completion:
    """A checked completion request."""

    prompts: tuple[str, ...]
    sampling: SampleConfig  # length, the rule's fields, seed (None: random) and n
    rule: SamplingRule  # the sampling fields with the biases checked against the vocabulary
    stops: tuple[str, ...]
    stream: bool
    echo: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.sampling.num_samples


def read_completion(body: Any, vocab: CharVocab, limits: ServeConfig, model_id: str) -> Completion:
    """The request in ``body`` (parsed JSON), or :class:`ApiError` (400, or 404 for another model)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    unknown = sorted(set(body) - OTHER_FIELDS - set(SAMPLING_FIELDS) - set(NEUTRAL))
    if unknown:  # a name may be a megabyte long: the message and param carry its start
        raise bad(f"unrecognized request argument supplied: {shown(unknown[0])}", unknown[0][:SHOWN_CHARS])
    for name, neutral in NEUTRAL.items():
        if name in body and not any(_same(body[name], value) for value in neutral):
            raise bad(f"{name} is not supported by this server (a character model); leave it out", name)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model must be a string", "model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {shown(model)} does not exist; this server has {shown(model_id)}",
                       param="model", code="model_not_found")  # fmt: skip
    prompt = "" if body.get("prompt") is None else body["prompt"]
    sampling = _sampling(body)
    rule = _named(lambda: SamplingRule.of(sampling, vocab))
    if sampling.length > limits.max_tokens:
        raise bad(f"max_tokens {sampling.length} is more than this server allows ({limits.max_tokens})", "max_tokens")
    count = len(prompt) if isinstance(prompt, list) else 1
    if count * sampling.num_samples > limits.max_streams:  # before reading every prompt
        raise bad(f"n times the number of prompts is {count * sampling.num_samples}; this server generates at"
                  f" most {limits.max_streams} at once", "n" if count == 1 else "prompt")  # fmt: skip
    prompts = _prompts(prompt, vocab, limits)
    if rule.logprobs is not None:  # each token's likeliest N, kept as objects until its text goes out
        tokens = sum(sampling.length + (len(vocab.encode(p)) if _flag(body, "echo") else 0) for p in prompts)
        scored = sampling.num_samples * tokens * (rule.logprobs + 1)  # every choice carries its echoed prompt's
        if scored > MAX_SCORED:
            raise bad(f"logprobs {rule.logprobs} for this many tokens would be {scored:,} scores; this server gives at"
                      f" most {MAX_SCORED:,} a request (fewer tokens, choices or logprobs)", "logprobs")  # fmt: skip
    stream, echo = _flag(body, "stream"), _flag(body, "echo")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}
                                or not isinstance(usage, bool)):  # fmt: skip
        raise bad("stream_options must be an object with at most include_usage: true or false", "stream_options")
    include_usage = bool(usage)
    return Completion(prompts, sampling, rule, _stops(body.get("stop")), stream, echo, include_usage)


def _same(value: Any, neutral: Any) -> bool:
    if neutral is None or isinstance(value, bool):
        return value is neutral
    return value == neutral


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, not {shown(value)}", name)
    return value


def _prompts(prompt: Any, vocab: CharVocab, limits: ServeConfig) -> tuple[str, ...]:
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    else:
        raise bad("prompt must be a string or a non-empty list of strings (token ids are not taken)", "prompt")
    for text in prompts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON can carry and text cannot
            raise bad("the prompt is not valid Unicode text (it holds a lone surrogate)", "prompt") from None
        if len(text) > limits.max_prompt:
            raise bad(f"the prompt has {len(text):,} characters; this server takes at most {limits.max_prompt:,}",
                      "prompt", "prompt_too_long")  # fmt: skip
        try:
            vocab.check_known(text, "the prompt", "use only characters of the model's training text")
        except UserError as e:
            raise bad(str(e), "prompt", "unknown_characters") from None
    return prompts


def _sampling(body: dict[str, Any]) -> SampleConfig:
    """The sampling options, checked by ``SampleConfig``; its messages name OpenAI's fields."""
    given = {SAMPLING_FIELDS[name]: body[name] for name in SAMPLING_FIELDS if body.get(name) is not None}
    for name, value in given.items():  # JSON's numbers: a float that is whole is fine where an int is wanted
        if isinstance(value, float) and name in WHOLE and value.is_integer():
            given[name] = int(value)
    try:
        return _named(lambda: SampleConfig(**given))
    except (TypeError, ValueError) as e:
        raise bad(f"a sampling field has a value of the wrong type: {e}") from None


def _named(make: Callable[[], T]) -> T:
    """``make()``, its ``UserError`` (which names an option) a 400 naming the field."""
    try:
        return make()
    except UserError as e:
        message = str(e)
        for name, field in SAMPLING_FIELDS.items():
            if message.startswith(option(field) + " "):
                raise bad(name + message[len(option(field)) :], name) from None
        raise bad(message) from None


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"each stop must be at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)
