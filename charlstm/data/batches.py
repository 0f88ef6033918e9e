"""The train/validation split of a token array and the batches of contiguous streams that
training and evaluation walk through."""

from __future__ import annotations

import numpy as np
import torch

from charlstm.errors import UserError


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training head and validation tail (the contiguous last ``val_fraction``)."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


class StreamBatches:
    """Contiguous streams over a token array, walked in chunks of ``seq_len``.

    By default the array is cut into ``streams`` equal pieces of L = (N - 1) // streams tokens
    that tile it; row b of every batch continues row b of the batch before, so the LSTM state
    can be carried::

        tokens:  |---- stream 0 ----|---- stream 1 ----| ... |-- stream B-1 --|(rest)
        chunk i: x[b] = tokens[b*L + i*T : b*L + (i+1)*T]    (B, T)
                 y[b] = tokens[b*L + i*T + 1 : b*L + (i+1)*T + 1]

    ``starts`` (B,) and ``stream_len`` place the streams elsewhere (evaluation reads a spread
    of pieces of a long text).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        streams: int,
        seq_len: int,
        drop_last: bool = True,
        starts: np.ndarray | None = None,
        stream_len: int | None = None,
    ):
        self.tokens, self.streams, self.seq_len = tokens, streams, seq_len
        self.tiled = starts is None
        self.stream_len = (len(tokens) - 1) // streams if stream_len is None else stream_len
        full, rest = divmod(self.stream_len, seq_len)
        self.num_chunks = full if drop_last or not rest else full + 1
        first = np.arange(streams, dtype=np.int64) * self.stream_len if starts is None else np.asarray(starts)
        self.starts = first.astype(np.int64)[:, None]  # (B, 1)

    def __len__(self) -> int:
        return self.num_chunks

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of chunk ``i``, each (B, T) int64 (T shorter for a last partial chunk)."""
        begin = i * self.seq_len
        width = min(self.seq_len, self.stream_len - begin)
        idx = self.starts + begin + np.arange(width + 1, dtype=np.int64)  # (B, T+1)
        window = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return window[:, :-1], window[:, 1:]


def check_trainable(train: np.ndarray, val: np.ndarray, batch_size: int, seq_len: int) -> None:
    """Refuse splits too short for one training batch or one evaluation chunk."""
    need = batch_size * seq_len + 1
    if len(train) < need:
        raise UserError(
            f"the training split has {len(train):,} characters, too short for one batch of "
            f"--batch-size {batch_size} x --seq-len {seq_len} (needs {need:,}); "
            f"use a longer corpus or smaller --batch-size/--seq-len"
        )
    if len(val) < 2:
        raise UserError(
            f"the validation split has {len(val)} characters, too few for one evaluation; "
            f"raise --val-fraction or use a longer corpus"
        )
