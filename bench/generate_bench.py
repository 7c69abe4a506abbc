"""Generation speed: this project's sampler against Hugging Face transformers' GPT-2, same sizes.

    python bench/generate_bench.py              # both sizes, one intra-op thread for both libraries
    python bench/generate_bench.py --threads 0  # torch's default thread count (2 here)
    python bench/generate_bench.py --floor      # also: what the weight matrices alone cost per token
    python bench/generate_bench.py --ngram      # also: the character-level default, with and without its n-gram table

Batch 1, a 16-token prompt, 256 new tokens, top-k 50 (temperature 1), with and without the KV cache, random
weights, the same context length for both (block_size = n_positions = 272: neither slides). transformers is timed
through GPT2LMHeadModel.generate from a GPT2Config of the same size (no download), which returns token ids. Ours
is timed two ways: llm.sample.generate_ids, token ids, the same work as transformers' generate; and
llm.sample.generate, the event path the app and the CLI use, which also gives every token's probability, 5
alternatives, the entropy and incremental UTF-8 text (work transformers' generate does not do). tokens/s = 256 /
wall time from the call to the last token, prefill included. Time to first token: from the generate call to the
first event.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llm.auto import NGRAM_ROWS
from llm.model import GPT, ModelConfig
from llm.sample import SampleConfig, generate, generate_ids

SIZES = [  # (n_layer, n_head, n_embd, vocab_size, ngram_embed)
    (4, 4, 128, 65, 0),
    (6, 6, 384, 4096, 0),
]
# --ngram: the shape train_cli.py picks for a character-level run, without and with the rule's n-gram table (its
# rows looked up by a hash of the last tokens in every decode step); transformers has no such table: not timed
NGRAM_SIZES = [(3, 4, 96, 256, 0), (3, 4, 96, 256, NGRAM_ROWS)]
PROMPT_LEN, NEW_TOKENS, TOP_K = 16, 256, 50
BLOCK_SIZE = PROMPT_LEN + NEW_TOKENS  # as transformers' n_positions


class BenchTokenizer:
    """Stands in for a trained tokenizer of any vocabulary size: token i is 1-3 printable ASCII bytes."""

    eot_id = None  # never stop early: every run makes exactly NEW_TOKENS tokens

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._vocab = [bytes(32 + (i * 7 + j) % 95 for j in range(1 + i % 3)) for i in range(vocab_size)]

    def token_bytes(self, i: int) -> bytes:
        return self._vocab[i]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self._vocab[i] for i in ids)

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours(model: GPT, tokenizer, prompt: list[int], use_kv_cache: bool, events: bool = True) -> int:
    """256 new tokens through generate (events, as the app) or generate_ids (token ids, as transformers)."""
    cfg = SampleConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=TOP_K, seed=0, use_kv_cache=use_kv_cache)
    steps = generate(model, tokenizer, prompt, cfg) if events else generate_ids(model, prompt, cfg)
    n = 0
    for _ in steps:
        n += 1
    assert n == NEW_TOKENS, n
    return n


def time_to_first_token(model: GPT, tokenizer, prompt: list[int], repeats: int = 20) -> float:
    cfg = SampleConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=TOP_K, seed=0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        events = generate(model, tokenizer, prompt, cfg)
        next(events)
        times.append(time.perf_counter() - t0)
        events.close()
    return statistics.median(times)


def matmul_share(model: GPT, tokenizer, prompt: list[int]) -> tuple[float, float]:
    """Share of our cached path's op time spent in matrix multiplies, and those ms per token (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(model, tokenizer, prompt, True)
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    mm = sum(r.self_cpu_time_total for r in rows if r.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return mm / total, mm / 1e3 / NEW_TOKENS


def matmul_floor(model: GPT, dtype: torch.dtype, tokens: int = 100) -> list[float]:
    """ms per token that the model's weight matrices alone cost at batch 1: one matmul per matrix per token,
    the matrices taken in turn as a decode step does (so a model larger than the cache streams from memory).
    fp32 and bf16: [nn.Linear's (out, in) through F.linear, (in, out) contiguous through mm (llm.decode.decoder's)].
    torch.int8: [weight-only int8 with a scale per row through torch's own kernel (torch._weight_int8pack_mm, the
    one gpt-fast uses), fp32 activations]."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x_dtype = torch.float32 if dtype == torch.int8 else dtype
    inputs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=x_dtype) for w in weights}
    if dtype == torch.int8:
        scaled = [(w, w.abs().amax(dim=1).clamp_min(1e-8) / 127) for w in weights]
        packed = [((w / scale[:, None]).round().to(torch.int8), scale) for w, scale in scaled]
        ways = [lambda: [torch._weight_int8pack_mm(inputs[w.shape[1]], w, scale) for w, scale in packed]]
    else:
        out_in = [w.to(dtype) for w in weights]
        in_out = [w.t().contiguous() for w in out_in]
        ways = [lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in out_in],
                lambda: [torch.mm(inputs[w.shape[0]], w) for w in in_out]]
    times = []
    for one_token in ways:
        for _ in range(5):
            one_token()
        t0 = time.perf_counter()
        for _ in range(tokens):
            one_token()
        times.append((time.perf_counter() - t0) / tokens * 1e3)
    return times


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def hf_model(n_layer: int, n_head: int, n_embd: int, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                     n_positions=BLOCK_SIZE)
    return GPT2LMHeadModel(cfg).eval()


def hf(model, prompt: torch.Tensor, use_cache: bool) -> int:
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=TOP_K,
                         temperature=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=use_cache,
                         pad_token_id=0)
    assert out.shape[1] == PROMPT_LEN + NEW_TOKENS, out.shape
    return NEW_TOKENS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7,
                   help="runs per cached figure, alternating between the paths; the best is kept (this machine's speed "
                        "swings by 1.5x within minutes)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for both libraries; 0 = torch's default. With two threads on a shared "
                        "2-core machine, every small op's thread hand-off waits on the other jobs, and both "
                        "libraries' figures swing several-fold from run to run")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--profile", action="store_true", help="also print the matmul share of our cached path")
    p.add_argument("--floor", action="store_true",
                   help="also time the weight matrices alone (fp32, bf16, int8 weight-only): the least a decode "
                        "step can cost")
    p.add_argument("--ngram", action="store_true",
                   help="also time the character-level default (3x4x96) without and with its n-gram table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    have_hf = not args.no_hf
    if have_hf and importlib.util.find_spec("transformers") is None:
        print("transformers is not installed (pip install transformers): timing this project only\n")
        have_hf = False

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 1, {PROMPT_LEN}-token prompt, "
          f"{NEW_TOKENS} new tokens, top-k {TOP_K}; cached: best of {args.repeats}, no-cache: one run\n")
    header = (f"{'model':<24}{'params':>8}{'ours ids':>10}{'ours events':>13}{'ours no-cache':>15}{'hf cache':>10}"
              f"{'hf no-cache':>13}{'ids/hf':>8}{'events/hf':>11}{'cache/no-cache':>16}")
    print(header + "\n" + "-" * len(header))
    results = []
    for n_layer, n_head, n_embd, vocab_size, ngram in SIZES + (NGRAM_SIZES if args.ngram else []):
        torch.manual_seed(0)
        config = ModelConfig(vocab_size=vocab_size, block_size=BLOCK_SIZE, n_layer=n_layer, n_head=n_head,
                             n_embd=n_embd, ngram_embed=ngram)
        model = GPT(config).eval()
        tokenizer = BenchTokenizer(vocab_size)
        prompt = torch.randint(0, vocab_size, (1, PROMPT_LEN))
        ids = prompt[0].tolist()
        runs = {  # name -> one timed call; cached runs alternate between all of them, so all see the same load
            "ids": functools.partial(ours, model, tokenizer, ids, use_kv_cache=True, events=False),
            "events": functools.partial(ours, model, tokenizer, ids, use_kv_cache=True, events=True),
        }
        m = hf_model(n_layer, n_head, n_embd, vocab_size) if have_hf and not ngram else None
        if m is not None:
            runs["hf cache"] = functools.partial(hf, m, prompt, use_cache=True)
        for run in runs.values():
            run()  # warm-up
        row = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for key, run in runs.items():
                row[key] = max(row[key], NEW_TOKENS / best_time(run, 1))
        # no-cache runs take 10-100x longer and vary less: one each
        row["no-cache"] = NEW_TOKENS / best_time(
            functools.partial(ours, model, tokenizer, ids, use_kv_cache=False, events=False), 1)
        if m is not None:
            row["hf no-cache"] = NEW_TOKENS / best_time(functools.partial(hf, m, prompt, use_cache=False), 1)
        name = f"{n_layer}x{n_head}x{n_embd} V{vocab_size}" + (f" n-gram {ngram // 1024}k" if ngram else "")
        nan = float("nan")
        ratios = (f"{row['ids'] / row['hf cache']:>7.1f}x{row['events'] / row['hf cache']:>10.1f}x" if m is not None
                  else f"{'-':>8}{'-':>11}")
        print(f"{name:<24}{model.num_params() / 1e6:>7.2f}M{row['ids']:>10.0f}{row['events']:>13.0f}"
              f"{row['no-cache']:>15.0f}{row.get('hf cache', nan):>10.0f}{row.get('hf no-cache', nan):>13.0f}"
              f"{ratios}{row['ids'] / row['no-cache']:>15.1f}x")
        results.append((name, model, tokenizer, prompt, row))

    name, model, tokenizer, prompt, _ = results[0]
    ttft = time_to_first_token(model, tokenizer, prompt[0].tolist())
    print(f"\ntokens/s (256 new tokens / wall time). Time to first streamed token, {name}: {ttft * 1e3:.1f} ms "
          "(median of 20)")
    print("\ntargets: cache >= 4x transformers' cache at both sizes (ids: the same work; events: ours does more);"
          " cache >= 5x no-cache; first token < 20 ms")
    for name, _, _, _, row in results:
        checks = [f"cache/no-cache {row['ids'] / row['no-cache']:.2f}x {_verdict(row['ids'] >= 5 * row['no-cache'])}"]
        if "hf cache" in row:
            checks[:0] = [f"{key}/hf {row[key] / row['hf cache']:.2f}x {_verdict(row[key] >= 4 * row['hf cache'])}"
                          for key in ("ids", "events")]
        print(f"  {name}: " + ", ".join(checks))
    print(f"  first token {ttft * 1e3:.1f} ms {_verdict(ttft < 0.020)}")
    if args.ngram:
        (plain, without), (table, with_table) = [(r[0], r[4]) for r in results[-2:]]
        print(f"\nthe n-gram table in a decode step (cached, token ids): {plain} {1e3 / without['ids']:.3f} ms a token, "
              f"{table} {1e3 / with_table['ids']:.3f} ms")
    if args.profile:
        print("\nour cached path under torch.profiler (its overhead inflates the totals, not the shares):")
        for name, model, tokenizer, prompt, _ in results:
            share, ms = matmul_share(model, tokenizer, prompt[0].tolist())
            print(f"  {name}: matrix multiplies {share:.0%} of op time, {ms:.2f} ms per token")
    if args.floor:
        print("\nthe weight matrices alone, one batch-1 matmul each per token (no attention, no sampling):")
        for name, model, _, _, row in results:
            fp32, bf16, (int8,) = (matmul_floor(model, dtype) for dtype in (torch.float32, torch.bfloat16, torch.int8))
            budget = f"; 4x transformers leaves {1e3 / (4 * row['hf cache']):.2f} ms" if "hf cache" in row else ""
            print(f"  {name}: fp32 {fp32[0]:.2f} ms (out, in) / {fp32[1]:.2f} ms (in, out), bf16 {min(bf16):.2f} ms "
                  f"(the faster layout), int8 weight-only {int8:.2f} ms per token{budget}")


if __name__ == "__main__":
    main()
