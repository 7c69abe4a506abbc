"""Sampling from a GPT: the settings, token selection, the generation loop and streamed text.

    KNOBS, SampleConfig                        each sampling setting declared once (range, what turns it off);
                                               a SampleConfig is checked when it is made, and only then
    generate_ids(model, prompt_ids, config)   -> (tokens (B,), logits (B, V)) per step; no text (tests, benchmarks)
    TextStream(tokenizer, stop)               token ids -> text deltas (incremental UTF-8, stop strings held back)
    generate(model, tokenizer, prompt, config) -> TokenEvent per sample per step (what the app and CLI consume)
    next_token_stats(logits, tokens, k)       the probability, top alternatives and entropy of each row: the
                                               events' figures and the app's scoring of a prompt
    prepare_prompt, parse_stop, sample_text   the one prompt preparation, stop-string parser and logged sample

The sampler owns the cache (llm/decode.py): one prefill through forward, then one token per step through
decode.make_step. Context window: a prompt longer than block_size is cropped to its last block_size tokens
(TokenEvent says how many were dropped). When the window is full, the context drops to its last
`block_size - block_size // 4` tokens and the cache is refilled from them in one forward; the no-cache path uses
the same windows, so both produce the same tokens for every positional variant (positions restart at 0 in each
window, as during training).
"""

from __future__ import annotations

import codecs
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import InitVar, dataclass

import torch
from torch import nn

from llm.config import SettingError
from llm.decode import KVCache, make_step


# --- settings ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One numeric sampling setting, declared once: the CLI flags (llm/generate.py), the app's sliders and every
    range check are made from it. `low`..`high` is the valid range (`low` itself excluded when low_open); `off` is
    the value that turns the rule off, and `note` what a special value means (default: "<off> = off"); `step`
    and `slider` are how a slider shows it (slider: its ends, where the valid range is open or too wide)."""

    name: str  # the SampleConfig field
    label: str  # the same for people
    low: float
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    off: float | None = None
    note: str = ""
    help: str = ""
    step: float = 1
    slider: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.note and self.off is not None:
            object.__setattr__(self, "note", f"{self.off:g} = off")

    def check(self, value: object, low: float | None = None, high: float | None = None,
              for_people: bool = False) -> int | float:
        """value (an int for an integer knob) if it lies in the range, narrowed by `low` / `high` (both
        inclusive) when given; else a SettingError saying the range, in the library's words (the field name)
        or for people (the label)."""
        low_open = self.low_open and low is None
        low, high = self.low if low is None else low, self.high if high is None else high
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, float):  # never nan or inf; for an integer knob, a whole float from a slider
            ok = math.isfinite(value) and (not self.integer or for_people and value.is_integer())
        ok = ok and (low < value if low_open else low <= value) and value <= high
        if not ok:
            raise SettingError(self._people_words(value, low, high, low_open) if for_people
                               else self._words(value, low, high, low_open))
        return int(value) if self.integer else value

    def _words(self, value: object, low: float, high: float, low_open: bool) -> str:
        if high == math.inf:
            kind = "an integer" if self.integer else "a number"
            what = f"{kind} {'>' if low_open else '>='} {low:g}"
        elif self.integer:
            what = f"an integer {'>' if low_open else '>='} {low:.0f} and <= {high:.0f}"
        else:
            what = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        return f"`{self.name}` must be {what}{f' ({self.note})' if self.note else ''}, got {value!r}"

    def _people_words(self, value: object, low: float, high: float, low_open: bool) -> str:
        kind = "a whole number" if self.integer else "a number"
        lo, hi = (f"{low:.0f}", f"{high:.0f}") if self.integer else (f"{low:g}", f"{high:g}")
        if high == math.inf:
            span = f"above {lo}" if low_open else f"of at least {lo}"
        else:
            span = f"above {lo} and at most {hi}" if low_open else f"from {lo} to {hi}"
        return f"{self.label} must be {kind} {span}{f' ({self.note})' if self.note else ''}; got {value!r}"


# in the order the app's controls and its API take them
KNOBS = (
    Knob("max_new_tokens", "max new tokens", 1, integer=True, help="tokens to generate at most"),
    Knob("temperature", "temperature", 0, note="0 = greedy", step=0.05,
         help="below 1 sharpens the distribution, above 1 flattens it"),
    Knob("top_k", "top-k", 0, integer=True, off=0, slider=(0, 200),
         help="sample among the k most likely tokens only; above the vocabulary it is clamped"),
    Knob("top_p", "top-p", 0, 1, low_open=True, off=1, step=0.05, slider=(0.05, 1),
         help="sample among the fewest tokens whose probabilities add up to p"),
    Knob("min_p", "min-p", 0, 1, off=0, step=0.01, slider=(0, 0.5),
         help="drop tokens less likely than min_p times the most likely one"),
    Knob("repetition_penalty", "repetition penalty", 0, low_open=True, off=1, step=0.05,
         help="above 1 discourages tokens already in the context (CTRL)"),
)


@dataclass(frozen=True)
class SampleConfig:
    """How to sample. Checked when made, and only then (frozen, so it stays as checked): a SettingError names
    the field and its range. A front end passes its own narrower `ranges` ({field: (low, high)}, None = the
    knob's own) and `for_people` for its words; an integer knob then also takes a whole float (a slider's 3.0)."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_samples: int = 1
    num_alternatives: int = 5
    use_kv_cache: bool = True
    ranges: InitVar[Mapping[str, tuple[float | None, float | None]] | None] = None
    for_people: InitVar[bool] = False

    def __post_init__(self, ranges, for_people) -> None:
        for knob in (*KNOBS, *_COUNTS):
            low, high = (ranges or {}).get(knob.name, (None, None))
            object.__setattr__(self, knob.name, knob.check(getattr(self, knob.name), low, high, for_people))
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise SettingError(f"`stop` must be a sequence of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise SettingError(f"`seed` must be an integer or None, got {self.seed!r}")


# how many: not sampling rules, but checked the same way
_COUNTS = (Knob("num_samples", "samples", 1, integer=True), Knob("num_alternatives", "alternatives", 0, integer=True))


def parse_stop(text: str, separator: str | None = ",") -> tuple[str, ...]:
    r"""Stop strings as typed: '\n', '\t' and '\\' are the characters, and with a separator, '\' before it keeps
    it as text. '\n\n, END' -> ('\n\n', 'END') (parts stripped of spaces, empty and repeated ones dropped);
    with separator None the whole text is one stop string (a command-line flag)."""
    escapes = {"n": "\n", "t": "\t", "\\": "\\", **({separator: separator} if separator else {})}
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] in escapes:
            current.append(escapes[text[i + 1]])
            i += 2
            continue
        if ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    if separator is None:
        return tuple(parts)
    return tuple(dict.fromkeys(p for p in (part.strip(" ") for part in parts) if p))


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
    model: nn.Module, prompt_ids: Sequence[int], config: SampleConfig, vocab_size: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), logits (B, V)) for each of config.max_new_tokens steps, B = config.num_samples.

    logits are the model's raw scores the tokens were drawn from. vocab_size limits sampling to ids below it
    (a tokenizer smaller than the model's vocabulary). There is no EOS or stop handling here: the caller
    closes the iterator when it has what it needs. The model is used as it is: call model.eval() first.
    Non-finite scores (broken weights) end it with a ValueError saying so."""
    c = model.config
    V = min(vocab_size or c.vocab_size, c.vocab_size)
    B = config.num_samples
    keep = c.block_size - c.block_size // 4  # context kept when the window slides
    buf, n, generator, seen, cache = _start(model, prompt_ids, config, V)
    start = 0  # the context window is buf[:, start:n]
    step_one = make_step(model) if cache is not None else None

    # One prefill for every sample: all rows share the prompt, the cache broadcasts it.
    logits = model(buf[:1, :n], kv_cache=cache)[0][:, -1, :V].expand(B, V)  # (B, V)
    try:
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
                logits = step_one(tokens.view(B, 1), cache)  # one token per step
            else:
                logits = model(buf[:, start:n], kv_cache=cache)[0][:, -1]  # (B, T): no cache, or a (re)fill
            if logits.size(-1) != V:
                logits = logits[:, :V]
    except (RuntimeError, IndexError):  # an index out of range: what non-finite scores lead to; checked only then
        if not torch.isfinite(logits).all():
            raise NonFiniteScores() from None
        raise


class NonFiniteScores(ValueError):
    """The model's next-token scores are NaN or infinite: its weights are broken."""

    def __init__(self):
        super().__init__("the model's next-token scores are not finite (NaN or infinity): its weights are broken, "
                         "as a training run that diverged leaves them")


def _start(model: nn.Module, prompt_ids: Sequence[int], config: SampleConfig, V: int
           ) -> tuple[torch.Tensor, int, torch.Generator, torch.Tensor | None, KVCache | None]:
    """generate_ids' state: (every token so far (B, prompt + max_new_tokens), how many, the seeded generator,
    the tokens seen (B, V) for the repetition penalty or None, the KV cache or None). A prompt longer than
    block_size is cropped. Buffers that could not fit in memory are a ValueError, not an allocator's crash."""
    c = model.config
    ids = list(prompt_ids)[-c.block_size :]  # the caller reports len(prompt_ids) - block_size
    if not ids:
        raise ValueError("prompt is empty: give at least one token")
    B, device, w = config.num_samples, model.lm_head.weight.device, model.lm_head.weight
    cache_len = min(c.block_size, len(ids) + config.max_new_tokens)  # positions the cache will ever hold
    cache_bytes = c.n_layer * B * 2 * c.n_embd * cache_len * w.element_size() if config.use_kv_cache else 0
    too_many = ValueError(f"{B} samples x {config.max_new_tokens:,} new tokens are too many to hold in memory with "
                          "this model: ask for fewer")
    if B * (len(ids) + config.max_new_tokens) * 8 + cache_bytes > _memory(device) / 2:
        raise too_many
    try:
        buf = torch.empty(B, len(ids) + config.max_new_tokens, dtype=torch.long, device=device)
        cache = KVCache.for_model(model, B, cache_len) if config.use_kv_cache else None
    except (RuntimeError, MemoryError):  # an allocator's refusal, in several words
        raise too_many from None
    buf[:, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen[:, [i for i in prompt_ids if 0 <= i < V]] = True
    return buf, len(ids), generator, seen, cache


def _memory(device: torch.device) -> float:
    """Bytes of memory a generation's buffers may take half of: the machine's on a CPU; unbounded on a GPU,
    whose allocator refuses at once (and without sysconf, as on Windows, where the allocator decides)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if device.type == "cpu" else math.inf
    except (ValueError, OSError, AttributeError):
        return math.inf


# --- what the model thought ----------------------------------------------------------------------------------


@dataclass
class Step:
    """The model's own next-token distribution at one position (softmax of its logits, before repetition
    penalty, temperature and truncation), so it reads the same whatever the sampling settings: the probability
    of the token that came, the top alternatives (id, prob) most likely first, and the entropy in nats."""

    prob: float
    alternatives: list[tuple[int, float]]
    entropy: float


@torch.inference_mode()
def next_token_stats(logits: torch.Tensor, tokens: torch.Tensor,
                     num_alternatives: int) -> tuple[list[float], list[list[int]], list[list[float]], list[float]]:
    """logits (N, V) and the tokens that came (N,) -> per row as Python lists: the token's probability, the
    ids and probabilities of the num_alternatives most likely tokens, and the entropy (nats). One conversion
    per tensor: the Python side of a decode step is most of its cost on a CPU."""
    probs = logits.softmax(-1, dtype=torch.float32)  # (N, V)
    entropy = torch.special.entr(probs).sum(-1)  # (N,) nats
    alt_probs, alt_ids = probs.topk(min(num_alternatives, probs.size(-1)), dim=-1)  # (N, A)
    token_probs = probs.gather(-1, tokens.unsqueeze(1)).squeeze(1)  # (N,)
    return token_probs.tolist(), alt_ids.tolist(), alt_probs.tolist(), entropy.tolist()


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
class TokenEvent(Step):
    """One new token of one sample, as streamed to the app and the CLI: what the model thought (Step; the
    sampled token need not be among the alternatives) and where the token goes."""

    sample: int  # which sample, 0 .. num_samples - 1
    index: int  # position of this token in the sample's output, from 0
    token_id: int
    text: str  # text this token releases: "" while a character or a possible stop string is pending
    finish_reason: str | None = None  # on a sample's last event: "eos", "stop" or "length"
    prompt_cropped: int = 0  # prompt tokens dropped from the front to fit block_size


def prepare_prompt(tokenizer, prompt: str | Sequence[int], block_size: int) -> tuple[list[int], int]:
    """A prompt -> (its token ids, how many of them do not fit the context: ids[cropped:] is what the model
    sees). An empty prompt starts where a document would, at <|endoftext|>."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    if not ids:
        if tokenizer.eot_id is None:
            raise ValueError("prompt is empty and the tokenizer has no <|endoftext|> token to start from")
        ids = [tokenizer.eot_id]
    return ids, max(0, len(ids) - block_size)


def generate(model: nn.Module, tokenizer, prompt: str | Sequence[int],
             config: SampleConfig | None = None) -> Iterator[TokenEvent]:
    """Stream TokenEvents: per step, one for each sample still running. A sample ends on the tokenizer's
    eot_id (its event has no text), on a stop string, or after max_new_tokens; its last event says why.
    The streamed texts of a sample, joined, are its output: decode(ids) cut before any stop string."""
    config = config if config is not None else SampleConfig()
    ids, cropped = prepare_prompt(tokenizer, prompt, model.config.block_size)
    eot = tokenizer.eot_id
    V = min(tokenizer.vocab_size, model.config.vocab_size)
    streams = [TextStream(tokenizer, config.stop) for _ in range(config.num_samples)]
    live = list(range(config.num_samples))

    steps = generate_ids(model, ids, config, vocab_size=V)
    try:
        for index, (tokens, logits) in enumerate(steps):
            tokens_l = tokens.tolist()
            if max(tokens_l) >= V:  # a draw from NaN scores: sample_index's cdf never passes u
                raise NonFiniteScores()
            token_probs, alt_ids, alt_probs, entropy = next_token_stats(logits, tokens, config.num_alternatives)
            if any(h != h for h in entropy):  # NaN: greedy picks a token from NaN scores without a word
                raise NonFiniteScores()
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
                yield TokenEvent(prob=token_probs[b], alternatives=list(zip(alt_ids[b], alt_probs[b])),
                                 entropy=entropy[b], sample=b, index=index, token_id=token_id, text=text,
                                 finish_reason=reason, prompt_cropped=cropped)
            if not live:
                break
    finally:
        steps.close()


SAMPLE_TEXT_SETTINGS = {"temperature": 0.8, "top_k": 50}


def sample_text(model: nn.Module, tokenizer, max_new_tokens: int, seed: int, prompt: str = "") -> str:
    """A short sample in eval mode (the model's mode is restored), with SAMPLE_TEXT_SETTINGS: what a training
    log and a model card show."""
    was_training = model.training
    model.eval()
    try:
        cfg = SampleConfig(max_new_tokens=max_new_tokens, seed=seed, **SAMPLE_TEXT_SETTINGS)
        return "".join(e.text for e in generate(model, tokenizer, prompt, cfg))
    finally:
        model.train(was_training)
