"""One knob: the model's shape, batch, learning rate and regularization from the corpus, the budget and the device.

    auto_settings(given, corpus_bytes, flops) -> (settings, reason)   what the rule picks of what is not given

The rule (README, "Settings chosen for you", says how it was found):
  1. Tokens the run can read: the time budget x the device's training FLOP/s (measure_flops, a few steps of the
     smallest shape) / each shape's FLOPs per token; or, with a step limit, steps x tokens per step.
  2. The shape: the largest of LADDER that reads at least TOKENS_PER_PARAM tokens per parameter in that budget
     (compute-bound, as Chinchilla), and has at most PARAMS_PER_TOKEN parameters per token of text (data-bound: a
     model much larger than its text memorizes it); the smallest shape when none does.
  3. Dropout from the passes over the text (epochs) that budget makes: DROPOUT's thresholds.
  4. At character level, hashed n-gram embeddings of NGRAM_ROWS rows (ModelConfig.ngram_embed): a run of 2 to 4
     characters recurs tens to hundreds of times in a text, so its row learns what follows it. Measured on tiny
     shakespeare: nanoGPT's final loss in a quarter of the steps. Not for BPE, whose runs of tokens recur too
     rarely: on tiny shakespeare at BPE 8192 the table memorized them and validation got worse.
  0. First, for BPE, the vocabulary from the text's size (bpe_vocab): about one token per VOCAB_BYTES bytes of
     text, a power of two in VOCAB_RANGE. Measured on tiny shakespeare (1.1 MB): in 5 minutes 8192 beat 4096,
     2048 and 1024, and at equal steps 4096 beat 512, 1024 and 2048 (bench/README.md, Model quality).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from llm.model import GPT, ModelConfig
from llm.runtime import peak_flops


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    lr: float  # AdamW's (embeddings and head; Muon's 0.02 carries over between widths)

    def settings(self) -> dict:
        return {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd, "block_size": self.block_size,
                "batch_size": self.batch_size, "lr": self.lr}  # (min_lr: a tenth of lr, given or chosen)


# from the smallest: the 5-minute CPU default first, GPT-2 small last
LADDER = (
    Shape(3, 4, 96, 128, 16, 3e-3),
    Shape(4, 4, 128, 128, 32, 3e-3),
    Shape(6, 6, 192, 256, 32, 2e-3),
    Shape(6, 6, 384, 256, 64, 1e-3),
    Shape(8, 8, 512, 512, 32, 8e-4),
    Shape(12, 12, 768, 1024, 32, 6e-4),
)
TOKENS_PER_PARAM = 20  # compute-bound: fewer tokens than this per parameter and a smaller model learns more
PARAMS_PER_TOKEN = 10  # data-bound: nanoGPT's shakespeare-char model (10.7M) on its 1M characters
DROPOUT = ((4.0, 0.0), (50.0, 0.1), (float("inf"), 0.2))  # (passes over the text up to, dropout)
VOCAB_BYTES = 128  # BPE: a vocabulary of one token per this many bytes of text
VOCAB_RANGE = (1024, 32768)
NGRAM_ROWS = 16384  # character level: more rows than the character triples of English text


def bpe_vocab(corpus_bytes: int) -> int:
    """The BPE vocabulary for a text of this many bytes: the largest power of two up to corpus_bytes / VOCAB_BYTES,
    within VOCAB_RANGE."""
    vocab = VOCAB_RANGE[0]
    while vocab * 2 <= min(corpus_bytes / VOCAB_BYTES, VOCAB_RANGE[1]):
        vocab *= 2
    return vocab


def ngram_table(tokenizer: str) -> int:
    """Rows of the n-gram table for a run with this tokenizer (step 4): NGRAM_ROWS for characters, none for BPE."""
    return NGRAM_ROWS if tokenizer == "char" else 0


def bytes_per_token(tokenizer: str, vocab: int) -> float:
    """Rough, before the tokenizer exists: BPE on English text (tiny shakespeare: 2.6 bytes a token at 1024, 3.1
    at 2048, 3.6 at 4096, 3.9 at 8192), 0.45 of a byte more each time the vocabulary doubles."""
    return 1.0 if tokenizer == "char" else max(2.6 + 0.45 * math.log2(vocab / 1024), 1.5)


def params(shape: Shape, vocab_size: int) -> int:
    """Parameters that compute (GPT.num_params(non_embedding=True): lookup tables left out)."""
    with torch.device("meta"):
        return GPT(_config(shape, vocab_size)).num_params(non_embedding=True)


def _config(shape: Shape, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                       block_size=shape.block_size)


def flops_per_token(shape: Shape, vocab_size: int) -> float:
    with torch.device("meta"):
        return GPT(_config(shape, vocab_size)).flops_per_token()


def measure_flops(device: torch.device) -> float:
    """Training FLOP/s of this device. A GPU of a known kind: a third of its peak (a small model cannot fill it, a
    large one with compile does better). Otherwise measured on the smallest shape: forward and backward of a batch,
    the fastest of five after a warm-up; a lower bound for the larger shapes, whose bigger matrices run faster."""
    if peak := peak_flops(device):
        return peak / 3
    shape = LADDER[0]
    model = GPT(_config(shape, 1024)).to(device)
    x = torch.randint(1024, (shape.batch_size, shape.block_size), device=device)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        model(x, x)[1].backward()
        if device.type != "cpu":
            getattr(torch, device.type).synchronize()
        times.append(time.perf_counter() - t0)
    return model.flops_per_token() * x.numel() / min(times[1:])


SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size")


def auto_settings(given: dict, corpus_bytes: int, flops: float | None, world: int = 1) -> tuple[dict, str]:
    """The settings the rule picks for those not `given` (flat settings: flags, --config, --preset), and a line
    saying why. Any shape setting given turns the ladder off (the configs' defaults fill the rest of the shape);
    dropout still follows the passes over the text the run makes. `flops` (the device's training FLOP/s) is needed
    only when a time budget limits the run (a step limit alone does not depend on speed). `world` processes
    train together (torchrun): each step reads that many batches, at that many times the FLOP/s."""
    chosen: dict = {}
    tokenizer = given.get("tokenizer", "bpe")
    if tokenizer == "bpe" and "vocab_size" not in given:
        chosen["vocab_size"] = bpe_vocab(corpus_bytes)
    vocab = given.get("vocab_size", chosen.get("vocab_size")) if tokenizer == "bpe" else 256
    max_steps = given.get("max_steps", 0)
    time_budget = given.get("time_budget", 0.0) or (0.0 if max_steps else 300.0)
    text_tokens = max(corpus_bytes / bytes_per_token(tokenizer, vocab), 1.0)

    def tokens_read(shape: Shape) -> float:
        by_steps = max_steps * shape.batch_size * shape.block_size * world if max_steps else float("inf")
        by_time = time_budget * world * flops / flops_per_token(shape, vocab) if time_budget and flops else float("inf")
        return min(by_steps, by_time)

    if not any(k in given for k in SHAPE_FIELDS):
        fits = [s for s in LADDER if tokens_read(s) >= TOKENS_PER_PARAM * params(s, vocab)
                and params(s, vocab) <= PARAMS_PER_TOKEN * text_tokens]
        chosen.update((fits[-1] if fits else LADDER[0]).settings())
    d = ModelConfig()
    shape = Shape(*(given.get(k, chosen.get(k, getattr(d, k, None))) for k in SHAPE_FIELDS[:4]),
                  given.get("batch_size", chosen.get("batch_size", 32)), 0.0)
    read, n = tokens_read(shape), params(shape, vocab)
    epochs = read / text_tokens
    if "dropout" not in given and read < float("inf"):
        chosen["dropout"] = next(p for limit, p in DROPOUT if epochs <= limit)
    if ngram_table(tokenizer):
        chosen["ngram_embed"] = ngram_table(tokenizer)
    chosen = {k: v for k, v in chosen.items() if k not in given}
    if not chosen:
        return {}, ""
    budget = f"{time_budget:,.0f} s" + (f" at {flops / 1e9:,.0f} GFLOP/s" if flops else "") if time_budget else ""
    limit = " or ".join(x for x in (budget, f"{max_steps:,} steps" if max_steps else "") if x)
    limit += f" on each of {world} processes" if world > 1 else ""
    tokens = f"BPE {vocab}: about {text_tokens:,.0f} tokens" if tokenizer == "bpe" else f"{text_tokens:,.0f} characters"
    ngram = f", n-gram embeddings of {chosen['ngram_embed']:,} rows" if "ngram_embed" in chosen else ""
    reason = (f"{corpus_bytes / 1e6:.2g} MB of text ({tokens}), {limit}: "
              f"{shape.n_layer} layers x {shape.n_embd}, context {shape.block_size}, batch {shape.batch_size} "
              f"({n / 1e6:.2g}M parameters, {read / n:,.0f} tokens read per parameter, {epochs:,.0f} passes over "
              f"the text{ngram})")
    return chosen, reason
