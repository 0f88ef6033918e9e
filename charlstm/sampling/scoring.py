"""The model's own log-probability of each token of a text, and the likeliest tokens in each place:
what the server's ``echo`` with ``logprobs`` returns for a prompt (how lm-evaluation-harness scores
a model over this API) and what ``Model.score`` returns. Read in one forward pass per chunk, the
state carried, from the state sampling starts from; no sampling rule applies (vLLM's raw
log-probabilities), so a text's score does not depend on how it would be sampled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from charlstm.net.model import CharLSTM, State

SCORE_CHUNK = 4096  # tokens per forward pass


@dataclass(frozen=True)
class TokenScores:
    """Scores of T tokens, each given the tokens before it."""

    ids: np.ndarray  # (T,) the tokens
    logprobs: np.ndarray  # (T,) float32: the log-probability of each
    top_ids: np.ndarray  # (T, N) the N likeliest tokens in each place, likeliest first
    top_logprobs: np.ndarray  # (T, N) float32: theirs


def named(names: Sequence[str], ids: np.ndarray, logprobs: np.ndarray) -> dict[str, float]:
    """The likeliest tokens in one place as OpenAI's ``top_logprobs`` gives them: name -> log-probability."""
    return dict(zip((names[t] for t in ids.tolist()), logprobs.tolist(), strict=True))


@torch.inference_mode()
def score_tokens(model: CharLSTM, ids: Sequence[int], start: State | None = None, top: int = 0) -> TokenScores:
    """The scores of ``ids[1:]``, each given the tokens before it, read from ``start`` (each
    (layers, 1, H)) or zeros; with the ``top`` likeliest tokens in each place."""
    device = model.head.weight.device
    tokens = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
    state = None if start is None else tuple(t.to(device) for t in start)
    was_training = model.training
    model.eval()
    logprobs, top_lp, top_ids = [], [], []
    try:
        for begin in range(0, max(len(tokens) - 1, 0), SCORE_CHUNK):
            chunk = tokens[begin : begin + SCORE_CHUNK + 1]
            logits, state = model(chunk[None, :-1], state)
            logp = torch.log_softmax(logits[0].float(), dim=-1)  # (n, V)
            logprobs.append(logp.gather(1, chunk[1:, None])[:, 0])
            best = logp.topk(top, dim=1)  # sorted, likeliest first
            top_lp.append(best.values)
            top_ids.append(best.indices)
    finally:
        model.train(was_training)
    if not logprobs:
        empty = np.zeros((0, top))
        return TokenScores(
            np.zeros(0, np.int64), np.zeros(0, np.float32), empty.astype(np.int64), empty.astype(np.float32)
        )
    return TokenScores(
        tokens[1:].cpu().numpy(),
        torch.cat(logprobs).cpu().numpy(),
        torch.cat(top_ids).cpu().numpy(),
        torch.cat(top_lp).cpu().numpy(),
    )
