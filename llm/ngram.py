"""Hashed n-grams: which row of a table the runs of tokens ending at each position look up (llm/model.py's
n-gram embeddings, and the decode step's, which must find the same rows).

    ngram_rows(ids, rows) -> (B, T, len(NGRAM_ORDERS))   ids: the NGRAM_CONTEXT tokens before, then the T tokens
"""

from __future__ import annotations

import functools

import torch

NGRAM_ORDERS = (2, 3, 4)  # the n-grams ending at a position: its token and the 1, 2 and 3 before it
NGRAM_CONTEXT = max(NGRAM_ORDERS) - 1  # tokens before a position that its n-grams need
HASH_P = (1 << 31) - 1  # a prime: products of two numbers below it fit in int64
HASH_BASE, HASH_SALT = 1_000_003, 0x5BD1E995 % HASH_P
MASK_31 = (1 << 31) - 1


def _scramble(h: torch.Tensor) -> torch.Tensor:
    """A bijection of [0, 2^31) that spreads near numbers apart (xor-shifts and odd multipliers, as hash
    finalizers do), in 31 bits so that every product fits in int64."""
    for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39)):
        h = (h ^ (h >> shift)) * mult & MASK_31
    return h ^ (h >> 15)


@functools.cache
def _hash_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """NGRAM_ORDERS and the powers of HASH_BASE modulo HASH_P, on a device once (not a copy to it every step)."""
    powers = [pow(HASH_BASE, j, HASH_P) for j in range(NGRAM_CONTEXT + 1)]
    return torch.tensor(NGRAM_ORDERS, device=device), torch.tensor(powers, device=device)


def ngram_rows(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """ids (B, K + T): the K = NGRAM_CONTEXT tokens before T positions (-1 where the text has none there), then the
    T tokens -> (B, T, len(NGRAM_ORDERS)) rows of a table of rows + 1: for each position and each n, a hash of the
    n tokens ending there; row `rows` where one of them is missing. The n tokens are read as the digits of a
    number modulo a prime, the newest the lowest (so all orders come from one running sum), salted by n so that
    a pair and a triple land apart, then scrambled. All orders at once: a decode step pays per op."""
    K, (orders, powers) = NGRAM_CONTEXT, _hash_constants(ids.device)
    digits = ids.unfold(1, K + 1, 1).flip(-1) + 1  # (B, T, K + 1): each position's token, then the K before it
    sums = (digits * powers % HASH_P).cumsum(-1).index_select(-1, orders - 1)  # (B, T, orders): the n newest
    h = _scramble((sums + orders * HASH_SALT) % HASH_P) % rows
    return h.masked_fill(digits.index_select(-1, orders - 1) == 0, rows)  # the n-gram's oldest token missing
