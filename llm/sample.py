"""Sampling from a GPT: the KV cache, token selection, and streamed text.

Three layers, each usable on its own:
    generate_ids(model, prompt_ids, config)   -> (tokens (B,), logits (B, V)) per step; no text (tests, benchmarks)
    TextStream(tokenizer, stop)               token ids -> text deltas (incremental UTF-8, stop strings held back)
    generate(model, tokenizer, prompt, config) -> TokenEvent per sample per step (what the app and CLI consume)

The sampler owns the cache. KVCache implements the protocol GPT.forward relies on (see llm/model.py):
    cache.pos                    int, tokens already cached (the same for every batch row)
    cache.update(layer, k, v)    k, v (B, H, T, hd) for positions [pos, pos + T); returns the keys and values
                                 for [0, pos + T). B may be 1 for a cache of batch_size rows: a prefill written
                                 once lands in every row, so num_samples > 1 costs a single prefill.
    cache.advance(T)             called by the model once per forward, after the last layer
    cache.layers                 per layer, keys and values as one (B, 2, H, max_len, hd): GPT.decoder's steps
                                 write a position's key and value there with one copy

Context window: a prompt longer than block_size is cropped to its last block_size tokens (TokenEvent says how
many were dropped). When the window is full, the context drops to its last `block_size - block_size // 4` tokens
and the cache is refilled from them in one forward; the no-cache path uses the same windows, so both produce the
same tokens for every positional variant (positions restart at 0 in each window, as during training).
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from llm.model import GPT


@dataclass
class SampleConfig:
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off; above the vocabulary it is clamped
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off; keep tokens with prob >= min_p * (top prob)
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the context (CTRL)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_samples: int = 1
    num_alternatives: int = 5
    use_kv_cache: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the field and its valid range."""
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("top_k", self.top_k, 0, "(0 = off)")
        _check_int("num_samples", self.num_samples, 1)
        _check_int("num_alternatives", self.num_alternatives, 0)
        if not _is_number(self.temperature) or not (0.0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not _is_number(self.min_p) or not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or not (0.0 < self.repetition_penalty < math.inf):
            raise ValueError(f"repetition_penalty must be a number > 0 (1 = off), got {self.repetition_penalty!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _check_int(name: str, value: object, low: int, note: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' ' + note if note else ''}, got {value!r}")


class KVCache:
    """Pre-allocated keys and values: kv (n_layer, B, 2, H, max_len, hd), keys at [:, :, 0] and values at
    [:, :, 1] (views k and v). One tensor, so a decode step stores a position's key and value with one copy
    (GPT.decoder). See the module docstring for the protocol."""

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
        self.layers = list(self.kv)  # per-layer views (B, 2, H, max_len, hd): fewer ops per step

    @classmethod
    def for_model(cls, model: GPT, batch_size: int) -> KVCache:
        c = model.config
        w = model.lm_head.weight
        return cls(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, w.device, w.dtype)

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

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0


# --- token selection -------------------------------------------------------------------------------------


def keep_sorted(probs: torch.Tensor, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """probs sorted descending (B, K) -> bool mask (B, K) of the tokens top-p and min-p keep.

    top-p keeps the smallest prefix whose mass reaches top_p (the first token always: its preceding mass is 0);
    min-p keeps tokens with prob >= min_p * the top prob (the top token always)."""
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_p < 1.0:
        keep &= (probs.cumsum(-1) - probs) < top_p
    if min_p > 0.0:
        keep &= probs >= min_p * probs[:, :1]
    return keep


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """logits (B, V) -> logits with every token outside the top-k, top-p and min-p sets at -inf.

    Applied in that order, each on the distribution the previous one left (renormalized). Sampling uses the
    same masks on sorted values (sample_next); this form is for showing which tokens were eligible."""
    V = logits.size(-1)
    vals, idx = logits.topk(min(top_k, V) if top_k else V, dim=-1)  # (B, K) sorted descending
    keep = keep_sorted(vals.softmax(-1), top_p, min_p)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, idx, vals.masked_fill(~keep, float("-inf")))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: logits (B, V) of tokens already seen (bool (B, V)) move toward "less likely"."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def sample_index(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from nonnegative weights (B, K), normalized or not -> indices (B, 1).

    Inverse CDF: a handful of small ops, where torch.multinomial costs several times more on a CPU. torch.rand
    is below 1 and rounding is monotone, so u < total: the index is always in range, and the first cdf above u
    follows a positive weight, so a zero weight (a masked token) is never drawn."""
    cdf = weights.cumsum(-1)  # (B, K)
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)


def sample_next(
    logits: torch.Tensor, config: SampleConfig, generator: torch.Generator, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). seen (B, V) bool is needed for the repetition penalty."""
    if logits.dtype != torch.float32:
        logits = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.temperature == 0.0:
        return logits.argmax(-1)
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k or config.top_p < 1.0 or config.min_p > 0.0:
        V = logits.size(-1)
        vals, idx = logits.topk(min(config.top_k, V) if config.top_k else V, dim=-1)  # (B, K) sorted
        probs = vals.softmax(-1)
        if config.top_p < 1.0 or config.min_p > 0.0:
            probs = probs.masked_fill(~keep_sorted(probs, config.top_p, config.min_p), 0.0)
        return idx.gather(-1, sample_index(probs, generator)).squeeze(-1)
    return sample_index(logits.softmax(-1), generator).squeeze(-1)


# --- the generation loop ---------------------------------------------------------------------------------


@torch.inference_mode()
def generate_ids(
    model: GPT, prompt_ids: Sequence[int], config: SampleConfig, vocab_size: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), logits (B, V)) for each of config.max_new_tokens steps, B = config.num_samples.

    logits are the model's raw scores the tokens were drawn from. vocab_size limits sampling to ids below it
    (a tokenizer smaller than the model's vocabulary). There is no EOS or stop handling here: the caller
    closes the iterator when it has what it needs. The model is used as it is: call model.eval() first."""
    config.validate()
    c = model.config
    ids = list(prompt_ids)[-c.block_size :]  # crop: the caller reports len(prompt_ids) - block_size
    if not ids:
        raise ValueError("prompt is empty: give at least one token")
    V = min(vocab_size or c.vocab_size, c.vocab_size)
    B = config.num_samples
    device = model.lm_head.weight.device
    keep = c.block_size - c.block_size // 4  # context kept when the window slides

    buf = torch.empty(B, len(ids) + config.max_new_tokens, dtype=torch.long, device=device)  # every token
    buf[:, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
    n, start = len(ids), 0  # tokens in buf; the context window is buf[:, start:n]

    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen[:, [i for i in prompt_ids if 0 <= i < V]] = True
    cache = KVCache.for_model(model, B) if config.use_kv_cache else None
    # One token per step through the model's lean decode step (forward's arithmetic, fewer ops), unless forward
    # hooks are registered anywhere in it: the decoder makes no module calls, so it would skip them.
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    step_one = model.decoder() if cache is not None and isinstance(model, GPT) and not hooked else None

    # One prefill for every sample: all rows share the prompt, the cache broadcasts it.
    logits = model(buf[:1, :n], kv_cache=cache)[0][:, -1, :V].expand(B, V)  # (B, V)
    for step in range(config.max_new_tokens):
        tokens = sample_next(logits, config, generator, seen)  # (B,)
        buf[:, n] = tokens
        n += 1
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        yield tokens, logits
        if step + 1 == config.max_new_tokens:
            return
        if n - start > c.block_size:  # window full: slide, and refill the cache from what is kept
            start = n - keep
            if cache is not None:
                cache.reset()
        if cache is not None and cache.pos > 0:
            x = tokens.view(B, 1)  # one token per step
            logits = step_one(x, cache) if step_one else model(x, kv_cache=cache)[0][:, -1]
        else:
            logits = model(buf[:, start:n], kv_cache=cache)[0][:, -1]  # (B, T): no cache, or a (re)fill
        if logits.size(-1) != V:
            logits = logits[:, :V]


# --- text --------------------------------------------------------------------------------------------------


class TextStream:
    """Token ids -> text deltas for one sample.

    Bytes go through an incremental UTF-8 decoder, so a character split across tokens comes out whole (never
    as U+FFFD until the stream ends mid-character, as decode() would show it). Text that could still be the
    start of a stop string is held back; when a stop string completes, the text before it is released,
    `stopped` becomes True and nothing after it is ever shown."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self._token_bytes = tokenizer.token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = tuple(stop)
        self.pending = ""  # decoded text held back because it may begin a stop string
        self.stopped = False

    def push(self, token_id: int) -> str:
        return self._release(self._decoder.decode(self._token_bytes(token_id)), final=False)

    def flush(self) -> str:
        """End of the stream: release what is held (an unfinished character becomes U+FFFD)."""
        return self._release(self._decoder.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return text
        text = self.pending + text
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        held = 0 if final else max(_stop_prefix_len(text, s) for s in self.stop)
        self.pending = text[len(text) - held :]
        return text[: len(text) - held]


def _stop_prefix_len(text: str, stop: str) -> int:
    """Length of the longest end of text that is a proper prefix of stop."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


@dataclass
class TokenEvent:
    """One new token of one sample, as streamed to the app and the CLI.

    prob, alternatives and entropy describe the model's own next-token distribution (softmax of its logits,
    before repetition penalty, temperature and truncation), so they read the same whatever the sampling
    settings; the sampled token need not be among the alternatives."""

    sample: int  # which sample, 0 .. num_samples - 1
    index: int  # position of this token in the sample's output, from 0
    token_id: int
    prob: float  # model probability of token_id
    alternatives: list[tuple[int, float]]  # the num_alternatives most likely (id, prob), most likely first
    entropy: float  # of the model's distribution, in nats
    text: str  # text this token releases: "" while a character or a possible stop string is pending
    finish_reason: str | None = None  # on a sample's last event: "eos", "stop" or "length"
    prompt_cropped: int = 0  # prompt tokens dropped from the front to fit block_size


def generate(model: GPT, tokenizer, prompt: str | Sequence[int], config: SampleConfig | None = None) -> Iterator[TokenEvent]:
    """Stream TokenEvents: per step, one for each sample still running. A sample ends on the tokenizer's
    eot_id (its event has no text), on a stop string, or after max_new_tokens; its last event says why.
    The streamed texts of a sample, joined, are its output: decode(ids) cut before any stop string."""
    config = config if config is not None else SampleConfig()
    config.validate()
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    eot = tokenizer.eot_id
    if not ids:
        if eot is None:
            raise ValueError("prompt is empty and the tokenizer has no <|endoftext|> token to start from")
        ids = [eot]  # an empty prompt starts where a document would
    cropped = max(0, len(ids) - model.config.block_size)
    V = min(tokenizer.vocab_size, model.config.vocab_size)
    A = min(config.num_alternatives, V)
    streams = [TextStream(tokenizer, config.stop) for _ in range(config.num_samples)]
    live = list(range(config.num_samples))

    steps = generate_ids(model, ids, config, vocab_size=V)
    try:
        for index, (tokens, logits) in enumerate(steps):
            with torch.inference_mode():
                probs = logits.softmax(-1, dtype=torch.float32)  # (B, V)
                entropy = torch.special.entr(probs).sum(-1)  # (B,) nats
                alt_probs, alt_ids = probs.topk(A, dim=-1)  # (B, A)
                token_probs = probs.gather(-1, tokens.unsqueeze(1))  # (B, 1)
            # One conversion per tensor per step: the Python side of a step is most of its cost on a CPU.
            tokens_l, token_probs_l, entropy_l = tokens.tolist(), token_probs.tolist(), entropy.tolist()
            alt_ids_l, alt_probs_l = alt_ids.tolist(), alt_probs.tolist()
            last_step = index + 1 == config.max_new_tokens
            for b in list(live):
                stream, token_id = streams[b], tokens_l[b]
                if token_id == eot:
                    text, reason = stream.flush(), "eos"
                else:
                    text = stream.push(token_id)
                    reason = "stop" if stream.stopped else None
                    if reason is None and last_step:
                        text += stream.flush()
                        reason = "stop" if stream.stopped else "length"
                if reason is not None:
                    live.remove(b)
                yield TokenEvent(
                    sample=b,
                    index=index,
                    token_id=token_id,
                    prob=token_probs_l[b][0],
                    alternatives=list(zip(alt_ids_l[b], alt_probs_l[b])),
                    entropy=entropy_l[b],
                    text=text,
                    finish_reason=reason,
                    prompt_cropped=cropped,
                )
            if not live:
                break
    finally:
        steps.close()
