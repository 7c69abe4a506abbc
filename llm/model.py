"""A decoder-only GPT: pure computation, no I/O, no sampler types.

Variants are config fields: positions (rope | learned | sinusoidal: one class each in POSITIONS), norm
(rmsnorm | layernorm), MLP (swiglu | gelu | relu2), tied input/output embeddings, QK-norm, logit soft-capping,
value embeddings, a learned mix of the embeddings into every block's input (x0_mix), U-net skips from the first
blocks to the last, hashed n-gram embeddings.
Attention goes through F.scaled_dot_product_attention; the explicit softmax(QK^T)V path runs only for
attention_maps (the app's view).

The model never owns cache state: `forward(idx, kv_cache=cache)` takes any object with the KVCacheProtocol
below (llm/decode.py's KVCache is the one; its one-token decode step lives there too, beside the cache it writes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llm.ngram import NGRAM_CONTEXT, ngram_rows

NORM_CHOICES = ("rmsnorm", "layernorm")
MLP_CHOICES = ("swiglu", "gelu", "relu2")
MAX_NGRAM_ROWS = 1 << 24


@dataclass
class ModelConfig:
    # defaults sized for about 5 minutes of training on a laptop CPU: at that budget a smaller model that takes
    # more steps wins, and it reads its text many times over, so dropout pays (bench/README.md, Model quality);
    # train_cli.py picks a size for the corpus and budget (llm/auto.py). vocab_size comes from the tokenizer
    vocab_size: int = 1024
    block_size: int = 128
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.1  # on the residual stream: the embeddings and each attention and MLP output
    attn_dropout: float = 0.0  # on the attention weights (nanoGPT's one dropout does both; here it costs 20% a step)
    bias: bool = False
    pos: str = "rope"  # a key of POSITIONS: rope | learned | sinusoidal
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    mlp: str = "swiglu"  # swiglu | gelu | relu2 (relu(x)^2, as modded-nanogpt)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    qk_norm: bool = False  # queries and keys RMS-normalized per head before attention (bounded attention logits)
    logit_softcap: float = 0.0  # output logits squashed to (-cap, cap) by cap * tanh(logits / cap); 0 = off
    # each block adds a table lookup of the token to its attention values (modded-nanogpt); off: at this size it
    # gained nothing in three seeds and costs 4% a step (bench/README.md, Model quality)
    value_embed: bool = False
    x0_mix: bool = False  # each block starts from a * x + b * x0, x0 the embeddings, a and b learned (from 1, 0)
    # U-net skips (modded-nanogpt): for i < n_layer // 2, block n_layer - 1 - i adds a learned share (from 0) of
    # block i's output to its input, the first blocks paired with the last
    unet: bool = False
    # hashed n-gram embeddings: the 2, 3 and 4 tokens that end at each position are each hashed to a row of one
    # table of this many rows (plus one for "the text has no token there"), added to the token's embedding: the
    # last few tokens without attention, for the cost of a lookup; 0 = off
    ngram_embed: int = 0
    # the token table and the output layer get rows up to a multiple of this: whole tiles for a GPU's matrix units
    # (None: the trainer's choice, 64 on CUDA and 1 elsewhere). The extra ids are never produced: their logits
    # are cut off before anyone sees them
    vocab_multiple: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, choices in (("pos", tuple(POSITIONS)), ("norm", NORM_CHOICES), ("mlp", MLP_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        POSITIONS[self.pos].check(self)
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not (isinstance(self.logit_softcap, (int, float)) and 0.0 <= self.logit_softcap < math.inf):
            raise ValueError(f"logit_softcap must be a number >= 0 (0 = off), got {self.logit_softcap!r}")
        n = self.ngram_embed
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_NGRAM_ROWS:
            raise ValueError(f"ngram_embed must be an integer from 0 (off) to {MAX_NGRAM_ROWS:,}, got {n!r}")
        m = self.vocab_multiple
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= 4096):
            raise ValueError(f"vocab_multiple must be an integer from 1 to 4096, got {m!r}")

    @property
    def padded_vocab(self) -> int:
        """Rows of the token table and the output layer: vocab_size rounded up to vocab_multiple."""
        m = self.vocab_multiple or 1
        return -(-self.vocab_size // m) * m


class KVCacheProtocol(Protocol):
    """What forward needs from a KV cache (llm/decode.py's KVCache implements it):
        pos                    tokens already cached (the same for every batch row)
        update(layer, k, v)    k, v (B, H, T, hd) for positions [pos, pos + T) -> the keys and values for
                               [0, pos + T), each (B, H, pos + T, hd)
        context(idx, n)        idx (B, T), the tokens at positions [pos, pos + T) -> (B, n + T): the n tokens
                               before them (-1 before position 0), then idx; called once per forward, before
                               the layers, by a model with n-gram embeddings only
        advance(T)             called once per forward, after the last layer"""

    pos: int

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def context(self, idx: torch.Tensor, n: int) -> torch.Tensor: ...

    def advance(self, T: int) -> None: ...


# -----------------------------------------------------------------------------
# positions: one class per encoding, registered in POSITIONS by its config name


def rope_frequencies(block_size: int, head_dim: int, theta: float) -> torch.Tensor:
    """Rotations e^(i * pos * theta^(-2j/hd)) as complex numbers, (block_size, head_dim // 2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # (T, hd/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last dim of x (B, T, ..., hd) by freqs (T, 1.., hd/2)."""
    # One complex multiply is fewer ops than the cos/sin form, and ops are what a decode step pays for.
    xf = x if x.dtype == torch.float32 else x.float()  # complex math needs fp32 (autocast hands us bf16/fp16)
    y = torch.view_as_real(torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * freqs).flatten(-2)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def sinusoidal_table(block_size: int, n_embd: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention is all you need", (block_size, n_embd)."""
    pos = torch.arange(block_size, dtype=torch.float64)[:, None]  # (T, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)  # (ceil(C/2),)
    table = torch.zeros(block_size, n_embd, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : n_embd // 2]
    return table.float()


class Positions(nn.Module):
    """How the model knows where a token is: a table added to the token embeddings, rotations of the queries
    and keys, or both. A subclass overrides what it uses; fixed tables are buffers derived from the config,
    kept out of the state dict (persistent=False)."""

    @staticmethod
    def check(config: ModelConfig) -> None:
        """Raise ValueError if the rest of the config does not suit this encoding."""

    def table(self, start: int, T: int) -> torch.Tensor | None:
        """(T, C) added to the embeddings of positions [start, start + T), or None."""
        return None

    def rotations(self, start: int, T: int) -> torch.Tensor | None:
        """complex64 (T, hd/2) rotating the queries and keys of positions [start, start + T), or None."""
        return None


class RotaryPositions(Positions):
    def __init__(self, config: ModelConfig):
        super().__init__()
        # Stored as real (T, hd/2, 2) pairs: Module.to(torch.bfloat16) would drop a complex buffer's imaginary
        # part (there is no complex bf16); a real one is only rounded, and rotations() rebuilds complex fp32.
        freqs = rope_frequencies(config.block_size, config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("freqs", torch.view_as_real(freqs), persistent=False)

    @staticmethod
    def check(config: ModelConfig) -> None:
        if (config.n_embd // config.n_head) % 2 != 0:
            raise ValueError(f"rope needs an even head size, got n_embd / n_head = {config.n_embd // config.n_head}")

    def rotations(self, start: int, T: int) -> torch.Tensor:
        return torch.view_as_complex(self.freqs[start : start + T].float())


class LearnedPositions(Positions, nn.Embedding):
    """A trained (block_size, C) table, as GPT-2's; an nn.Embedding, so it is initialised as one."""

    def __init__(self, config: ModelConfig):
        nn.Embedding.__init__(self, config.block_size, config.n_embd)

    def table(self, start: int, T: int) -> torch.Tensor:
        return self.weight[start : start + T]


class SinusoidalPositions(Positions):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("pos_table", sinusoidal_table(config.block_size, config.n_embd), persistent=False)

    def table(self, start: int, T: int) -> torch.Tensor:
        return self.pos_table[start : start + T]


POSITIONS: dict[str, type[Positions]] = {"rope": RotaryPositions, "learned": LearnedPositions,
                                         "sinusoidal": SinusoidalPositions}


# -----------------------------------------------------------------------------
# the blocks


QK_EPS = 1e-6  # qk_norm's floor on a head's norm


def unit_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / ||x|| over the last dim (||x|| at least eps)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): near the identity for small logits, never beyond +-cap; cap 0 = unchanged."""
    return cap * torch.tanh(logits / cap) if cap else logits


def rms_norm(x: torch.Tensor, gain: torch.Tensor | float, eps: float) -> torch.Tensor:
    """x / ||x|| * gain over the last dim; RMSNorm's gain is weight * sqrt(C), as ||x|| = sqrt(C) * rms(x)."""
    return unit_norm(x, eps) * gain


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed as x / ||x|| * sqrt(C) * weight: on a CPU, F.rms_norm (and F.normalize's
    Python wrappers) cost several times the op dispatches, and dispatches are what a decode step spends."""

    def __init__(self, n_embd: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps  # guards an all-zero x only
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.register_buffer("scale", torch.tensor(math.sqrt(n_embd)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight * self.scale, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout, self.attn_dropout = config.dropout, config.attn_dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # a per-token vector added to the values: capacity that costs a lookup, not a matmul
        self.value_embed = nn.Embedding(config.vocab_size, config.n_embd) if config.value_embed else None

    def forward(self, x: torch.Tensor, idx: torch.Tensor, freqs: torch.Tensor | None, mask: torch.Tensor | None,
                kv_cache: KVCacheProtocol | None, attns: list[torch.Tensor] | None) -> torch.Tensor:
        """x (B * T, C), idx (B, T) -> (B * T, C): 2-D activations spare every Linear a reshape. With a list in
        `attns`, the explicit softmax(QK^T)V path runs and appends this layer's weights (B, H, T, Tk) to it."""
        B, T = idx.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, H, hd)
        qk, v = qkv.narrow(2, 0, 2), qkv.select(2, 2)  # (B, T, 2, H, hd), (B, T, H, hd)
        if self.value_embed is not None:
            v = v + self.value_embed(idx).view_as(v)
        if self.qk_norm:
            qk = rms_norm(qk, math.sqrt(self.head_dim), QK_EPS)
        if freqs is not None:
            qk = apply_rope(qk, freqs)  # q and k rotated in one go
        q, k = qk.transpose(1, 3).unbind(2)  # (B, H, T, hd) each
        v = v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, H, Tk, hd), Tk = cached + T
        # mask is None when plain causal (Tq == Tk) or when a single query may see every key.
        causal = mask is None and T > 1
        if attns is not None:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, Tk)
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            attns.append(att.softmax(dim=-1))
            y = F.dropout(attns[-1], self.attn_dropout, self.training) @ v
        else:
            dropout_p = self.attn_dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        y = self.c_proj(y.transpose(1, 2).reshape(B * T, -1))  # (B * T, C)
        if self.training and self.dropout:
            y = F.dropout(y, self.dropout)
        return y


def mlp_activation(h: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP's nonlinearity on c_fc's output: SwiGLU (silu(gate) * up, the two halves fused), GELU, or ReLU^2."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if kind == "relu2":
        return F.relu(h).square()
    return F.gelu(h)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.mlp
        if self.kind == "swiglu":
            # 8/3 * C keeps the parameter count of a 4 * C GELU MLP; rounded up to a multiple of 64.
            hidden = (8 * config.n_embd // 3 + 63) // 64 * 64
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # gate and up, fused
        else:
            hidden = 4 * config.n_embd
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_proj(mlp_activation(self.c_fc(x), self.kind))
        if self.training and self.dropout:
            h = F.dropout(h, self.dropout)
        return h


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        # x0_mix: the block's input is lambdas[0] * x + lambdas[1] * x0, starting as x
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0])) if config.x0_mix else None

    def forward(self, x: torch.Tensor, x0: torch.Tensor, idx: torch.Tensor, freqs: torch.Tensor | None,
                mask: torch.Tensor | None, kv_cache: KVCacheProtocol | None,
                attns: list[torch.Tensor] | None) -> torch.Tensor:
        if self.lambdas is not None:
            x = self.lambdas[0] * x + self.lambdas[1] * x0
        x = x + self.attn(self.ln_1(x), idx, freqs, mask, kv_cache, attns)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab, config.n_embd)
        self.wpe = POSITIONS[config.pos](config)  # nanoGPT's name: a learned table stays wpe.weight
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ngram = nn.Embedding(config.ngram_embed + 1, config.n_embd) if config.ngram_embed else None
        self.skip_weights = nn.Parameter(torch.zeros(config.n_layer // 2)) if config.unet else None
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """All weight init lives here: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2)."""
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1.0 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):  # the n-gram table starts at zero: the model as without it
                nn.init.normal_(module.weight, mean=0.0, std=0.0 if module is self.ngram else std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
            elif isinstance(module, Block) and module.lambdas is not None:
                module.lambdas.data.copy_(torch.tensor([1.0, 0.0]))
        if self.skip_weights is not None:  # U-net skips start closed: the model as without them
            nn.init.zeros_(self.skip_weights)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCacheProtocol | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With kv_cache, idx holds the positions after the cached ones; the cache is extended by T."""
        B, T = idx.shape
        x = self._trunk(idx, kv_cache, None)
        logits = self.head(x)  # (B * T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets.flatten(), ignore_index=-1)
        return logits.view(B, T, -1), loss

    def attention_maps(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """idx (B, T) -> (logits (B, T, V), attention weights per layer (B, H, T, T)), by the explicit
        softmax(QK^T)V path: slower than forward, whose logits these equal up to float rounding."""
        B, T = idx.shape
        attns: list[torch.Tensor] = []
        x = self._trunk(idx, None, attns)
        return self.head(x).view(B, T, -1), attns

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream (..., C) -> logits (..., V): the final norm, the output layer (its padding rows cut
        off: a view, never a copy), the soft cap."""
        logits = self.lm_head(self.ln_f(x))
        if self.config.padded_vocab != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return softcap(logits, self.config.logit_softcap)

    def _trunk(self, idx: torch.Tensor, kv_cache: KVCacheProtocol | None,
               attns: list[torch.Tensor] | None) -> torch.Tensor:
        """Embeddings and blocks: idx (B, T) -> the last block's output (B * T, C)."""
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens ({start} cached + {T} new) exceeds block_size {self.config.block_size}"
            )
        x = self.wte(idx)  # (B, T, C)
        if self.ngram is not None:  # the tokens before the first: from the cache, else none
            K = NGRAM_CONTEXT
            ids = kv_cache.context(idx, K) if kv_cache is not None else F.pad(idx, (K, 0), value=-1)
            x = x + self.ngram(ngram_rows(ids, self.config.ngram_embed)).sum(2)
        table, freqs = self.wpe.table(start, T), self.wpe.rotations(start, T)
        if table is not None:
            x = x + table
        if freqs is not None:
            freqs = freqs[:, None, None]  # (T, 1, 1, hd/2): broadcasts over (2, H)
        if self.training and self.config.dropout:
            x = F.dropout(x, self.config.dropout)
        x = x.view(B * T, -1)  # (B * T, C) from here on

        # SDPA's is_causal aligns the mask to the top-left, which is wrong when T new queries follow `start`
        # cached keys (Tq != Tk); that case gets an explicit mask: query i sees keys 0..start+i.
        mask = None
        if start > 0 and T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        L, skips = len(self.h), []  # U-net: the outputs of the first n_skip blocks, for the last n_skip
        x0, n_skip = x, len(self.skip_weights) if self.skip_weights is not None else 0
        for i, block in enumerate(self.h):
            if i >= L - n_skip:  # block i takes block L - 1 - i's output
                x = x + self.skip_weights[L - 1 - i] * skips[L - 1 - i]
            x = block(x, x0, idx, freqs, mask, kv_cache, attns)
            if i < n_skip:
                skips.append(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        return x

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once). non_embedding leaves out the lookup-only tables: the position
        encoding's (a learned table) and, when untied, the token table (a tied one is also the output matmul)."""
        c = self.config
        padding = (c.padded_vocab - c.vocab_size) * c.n_embd  # rows of the token table never used
        n = sum(p.numel() for p in self.parameters()) - padding * (1 if c.tie_embeddings else 2)
        if non_embedding:
            n -= sum(p.numel() for p in self.wpe.parameters())
            n -= sum(b.attn.value_embed.weight.numel() for b in self.h if b.attn.value_embed is not None)
            n -= self.ngram.weight.numel() if self.ngram is not None else 0
            if not c.tie_embeddings:
                n -= self.wte.weight.numel() - padding
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward) at full context: 6N + 12 * L * C * T (PaLM appendix B)."""
        c = self.config
        return 6.0 * self.num_params(non_embedding=True) + 12.0 * c.n_layer * c.n_embd * c.block_size
