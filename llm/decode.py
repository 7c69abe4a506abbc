"""The KV cache and the one-token decode step that writes it: the sampler's fast path, beside the cache it fills.

    KVCache.for_model(model, batch_size)   keys and values of every layer, preallocated (GPT.forward's
                                           KVCacheProtocol, plus `layers` for the decoder)
    decoder(model)                         -> step(idx (B, 1), cache) -> logits (B, V): forward's arithmetic
                                           rearranged for one position
    make_step(model)                       the step the sampler runs: decoder(model) when it may stand in for
                                           forward, forward itself otherwise
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm.model import GPT, QK_EPS, RMSNorm, apply_rope, mlp_activation, softcap, unit_norm
from llm.ngram import NGRAM_CONTEXT, ngram_rows

StepFn = Callable[[torch.Tensor, "KVCache"], torch.Tensor]  # (idx (B, 1), cache) -> logits (B, V)


class KVCache:
    """Pre-allocated keys and values: kv (n_layer, B, 2, H, max_len, hd), keys at [:, :, 0] and values at
    [:, :, 1] (views k and v). One tensor, so a decode step stores a position's key and value with one copy.

    update() and context() take a batch of 1 for a cache of B rows: a prefill written once lands in every row, so
    num_samples > 1 costs a single prefill. `ids` (B, max_len) keeps the tokens themselves, for the n-gram
    embeddings' context."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.kv = torch.zeros(n_layer, batch_size, 2, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.k, self.v = self.kv.select(2, 0), self.kv.select(2, 1)  # (n_layer, B, H, max_len, hd) each
        self.max_len = max_len
        self.pos = 0
        self.layers = list(self.kv)  # per-layer views (B, 2, H, max_len, hd): fewer ops per decode step
        self.ids = torch.full((batch_size, max_len), -1, dtype=torch.long, device=device)

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache for `model`, of max_len positions (at most, and by default, its block_size)."""
        c = model.config
        w = model.lm_head.weight
        max_len = min(max_len or c.block_size, c.block_size)
        return cls(c.n_layer, batch_size, c.n_head, max_len, c.n_embd // c.n_head, w.device, w.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, T, _ = k.shape
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos} used, {T} more asked for")
        k_all, v_all = self.k[layer], self.v[layer]
        k_all.narrow(2, self.pos, T).copy_(k)  # a batch-1 prefill broadcasts over every row
        v_all.narrow(2, self.pos, T).copy_(v)
        if B < k_all.size(0):
            k_all, v_all = k_all[:B], v_all[:B]
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def context(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        B, T = idx.shape
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos} used, {T} more asked for")
        self.ids[:, self.pos : end] = idx  # a batch-1 prefill broadcasts over every row
        start = self.pos - n
        ids = self.ids[:B, max(start, 0) : end]
        return F.pad(ids, (-start, 0), value=-1) if start < 0 else ids

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0


def make_step(model: nn.Module) -> StepFn:
    """The one-token step a sampler runs: the lean decoder for a GPT, else forward. A model with forward hooks
    anywhere in it gets forward too: the decoder makes no module calls, so it would skip them."""
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    if isinstance(model, GPT) and not hooked:
        return decoder(model)
    return lambda idx, kv_cache: model(idx, kv_cache=kv_cache)[0][:, -1]


def _norm(m: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]:
    """-> (the norm without an RMSNorm's gain, that gain for the next matrix to absorb)."""
    if isinstance(m, RMSNorm):
        return functools.partial(unit_norm, eps=m.eps), m.weight * m.scale
    return lambda x: F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps), None


def _linear(m: nn.Linear, gain: torch.Tensor | None = None, rows: int | None = None
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """x @ W.T (+ b) through a contiguous (in, out) copy of W's first `rows` rows (all by default), with a
    preceding norm's gain folded in."""
    w = m.weight[:rows] if gain is None else m.weight[:rows] * gain
    w_t, b = w.detach().t().contiguous(), m.bias if m.bias is None else m.bias[:rows]  # (in, out)
    if b is None:
        return lambda x: torch.mm(x, w_t)
    b = b.detach()
    return lambda x: torch.addmm(b, x, w_t)


def _embedder(model: GPT) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
    """embed(idx (B,), kv_cache) -> (B, C): the input of the first block at position kv_cache.pos, as forward
    makes it: the token's embedding, its n-grams' (the tokens before it from the cache), the position table's."""
    c, wte = model.config, model.wte.weight.detach()
    ngram = model.ngram.weight.detach() if model.ngram is not None else None
    table = model.wpe.table(0, c.block_size)

    def embed(idx: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        x = torch.embedding(wte, idx)
        if ngram is not None:
            rows = ngram_rows(kv_cache.context(idx[:, None], NGRAM_CONTEXT), c.ngram_embed)  # (B, 1, orders)
            x = x + torch.embedding(ngram, rows[:, 0]).sum(1)
        return x if table is None else x + table.select(0, kv_cache.pos)

    return embed


def _layers(model: GPT) -> list[tuple]:
    """Each block's weights and settings as the step reads them: (x0_mix's weights, the U-net skip it takes,
    whether its output is kept for one, ln_1, attention in, value embeddings, attention out, ln_2, MLP in, MLP
    out, the MLP's kind)."""
    L, skip_w = len(model.h), model.skip_weights.detach().tolist() if model.skip_weights is not None else []
    layers = []
    for i, block in enumerate(model.h):
        (ln_1, g_1), (ln_2, g_2) = _norm(block.ln_1), _norm(block.ln_2)
        ve = block.attn.value_embed.weight.detach() if block.attn.value_embed is not None else None
        mix = block.lambdas.detach().clone().tolist() if block.lambdas is not None else None
        skip = (L - 1 - i, skip_w[L - 1 - i]) if i >= L - len(skip_w) else None
        layers.append((mix, skip, i < len(skip_w), ln_1, _linear(block.attn.c_attn, g_1), ve,
                       _linear(block.attn.c_proj), ln_2, _linear(block.mlp.c_fc, g_2), _linear(block.mlp.c_proj),
                       block.mlp.kind))
    return layers


def decoder(model: GPT) -> StepFn:
    """A one-token step over a copy of the weights as they are now: step(idx, kv_cache) takes idx (B, 1) after
    kv_cache.pos cached positions, extends the cache by one and returns logits (B, V), equal to
    forward(idx, kv_cache=kv_cache)[0][:, -1] up to float rounding (tested for every variant). Make a new one
    after the weights change. Inference only (no dropout, no attention weights).

    A CPU pays per op and per Python call more than per FLOP at one position (bench/README.md), so: every weight
    matrix is copied once as a contiguous (in, out) matrix, which a batch-1 matmul reads faster, with each
    RMSNorm's gain folded into the matrix after it (norm(x) * g @ W.T = norm(x) @ (W * g).T); no module calls,
    no transposes, no mask, in-place ops on the step's own tensors; RoPE rotates q, k and v in one complex
    multiply (v by 1 + 0i), so the new key and value go into the cache with one copy. The copies cost the
    weights' size in memory while a generation runs."""
    c = model.config
    H, hd = c.n_head, c.n_embd // c.n_head
    layers, (ln_f, g_f), embed = _layers(model), _norm(model.ln_f), _embedder(model)
    head = _linear(model.lm_head, g_f, rows=c.vocab_size)  # (a padded output layer's extra rows left out)
    rope = model.wpe.rotations(0, c.block_size)
    if rope is not None:  # (T, 3, 1, 1, hd/2): q and k rotate, v is multiplied by 1
        rope = torch.stack([rope, rope, torch.ones_like(rope)], dim=1)[:, :, None, None]

    def step(idx: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        B, pos = idx.size(0), kv_cache.pos
        if pos >= c.block_size:
            raise ValueError(f"sequence of {pos + 1} tokens ({pos} cached + 1 new) exceeds block_size {c.block_size}")
        x = embed(idx.view(B), kv_cache)  # (B, C)
        freqs = rope.select(0, pos) if rope is not None else None  # (3, 1, 1, hd/2)
        x0, skips = x, []  # x0_mix's embeddings: the first mix makes a new x before anything writes in place
        # In-place ops (add_, mul_) only ever write tensors this step created
        for (mix, skip, keep, ln_1, attn_in, ve, attn_out, ln_2, fc, proj, mlp), kv in zip(layers, kv_cache.layers):
            if mix is not None:
                x = mix[0] * x + mix[1] * x0
            if skip is not None:  # U-net: (the block whose output this one takes, its weight)
                x = x + skip[1] * skips[skip[0]]
            qkv = attn_in(ln_1(x))  # (B, 3C)
            if ve is not None:  # value embeddings: the token's vector added to v
                qkv.narrow(1, 2 * c.n_embd, c.n_embd).add_(torch.embedding(ve, idx.view(B)))
            if c.qk_norm:  # q and k to norm sqrt(hd) per head, in place
                qk = qkv.view(B, 3, H, hd).narrow(1, 0, 2)
                qk.div_(torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min_(QK_EPS)).mul_(math.sqrt(hd))
            if freqs is not None and qkv.dtype == torch.float32:
                torch.view_as_complex(qkv.view(B, 3, H, 1, hd // 2, 2)).mul_(freqs)
            elif freqs is not None:  # a half-precision model or autocast: complex math in fp32
                qkv = apply_rope(qkv.view(B, 3, H, 1, hd), freqs)
            qkv = qkv.view(B, 3, H, 1, hd)
            kv.narrow(-2, pos, 1).copy_(qkv.narrow(1, 1, 2))  # kv (B, 2, H, max_len, hd)
            k, v = kv.narrow(-2, 0, pos + 1).unbind(1)  # (B, H, pos + 1, hd) each
            y = F.scaled_dot_product_attention(qkv.select(1, 0), k, v)  # one query sees every key: no mask
            x.add_(attn_out(y.view(B, -1)))
            x.add_(proj(mlp_activation(fc(ln_2(x)), mlp)))
            if keep:  # a copy: the next blocks add to x in place
                skips.append(x.clone())
        kv_cache.advance(1)
        return softcap(head(ln_f(x)), c.logit_softcap)

    return step
