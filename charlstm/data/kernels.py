"""The compiled loop that turns code points into token ids (own tokens, or UTF-8 byte tokens for
the rest): a Python loop over a gigabyte corpus would take minutes. One of the two modules that
import Numba (the other is ``sampling/kernels.py``)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def encode_block(codes: np.ndarray, table: np.ndarray, byte_ids: np.ndarray, out: np.ndarray) -> int:
    """Token ids of code points (N,) into ``out`` (room for 4N): ``table[c]`` where ``c`` has its
    own token (>= 0); otherwise, where ``byte_ids`` (256,) holds byte tokens, the ids of its UTF-8
    bytes, or nothing where it holds none (-1). Returns how many ids were written."""
    n = 0
    for i in range(codes.shape[0]):
        c = codes[i]
        own = table[c] if c < table.shape[0] else -1
        if own >= 0:
            out[n] = own
            n += 1
        elif byte_ids[0x80] < 0:  # no byte fallback: the character is left out
            continue
        elif c < 0x80:
            out[n] = byte_ids[c]
            n += 1
        elif c < 0x800:
            out[n], out[n + 1] = byte_ids[0xC0 | (c >> 6)], byte_ids[0x80 | (c & 0x3F)]
            n += 2
        elif c < 0x10000:
            out[n] = byte_ids[0xE0 | (c >> 12)]
            out[n + 1], out[n + 2] = byte_ids[0x80 | ((c >> 6) & 0x3F)], byte_ids[0x80 | (c & 0x3F)]
            n += 3
        else:
            out[n], out[n + 1] = byte_ids[0xF0 | (c >> 18)], byte_ids[0x80 | ((c >> 12) & 0x3F)]
            out[n + 2], out[n + 3] = byte_ids[0x80 | ((c >> 6) & 0x3F)], byte_ids[0x80 | (c & 0x3F)]
            n += 4
    return n
