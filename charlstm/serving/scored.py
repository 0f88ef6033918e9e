"""Log-probabilities as a completion hands them out: the tokens of a piece of text with their
scores, in OpenAI's legacy ``logprobs`` terms, taken in order from those the engine keeps."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    """The tokens of some text with their log-probabilities."""

    tokens: list[str]  # each token's name (``CharVocab.token_names``)
    token_logprobs: list[float | None]  # None where nothing came before it (a prompt's first token)
    top_logprobs: list[dict[str, float] | None]  # the likeliest tokens in its place, and theirs
    text_offset: list[int]  # where its text starts in the choice's text (the character a byte goes into)


def hand_out(pending: deque[tuple[int, int, str, float, dict[str, float]]], sent: int) -> Scored:
    """The scores in ``pending`` (where each token's text ends and starts, its name, log-probability
    and likeliest) whose text lies within the first ``sent`` characters, taken off in order; those
    of a stop sequence, never handed out, stay behind."""
    scored = Scored([], [], [], [])
    while pending and pending[0][0] <= sent:
        _, start, name, logprob, top = pending.popleft()
        scored.tokens.append(name)
        scored.token_logprobs.append(logprob)
        scored.top_logprobs.append(top)
        scored.text_offset.append(start)
    return scored
