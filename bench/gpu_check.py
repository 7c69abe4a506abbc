"""One short check of the GPU paths (issue 18), for a machine with a GPU: bench/gpu_check.sh runs it.

    python bench/gpu_check.py            # on CUDA: the gpt2 preset's shape, about 3 minutes
    python bench/gpu_check.py --smoke    # any machine: a tiny model, a few steps (checks the script itself)

Prints one table:
  - training: the gpt2 preset's model (12 x 768, context 1024, vocabulary 32768) on random tokens, batch 16, bf16
    autocast, torch.compile, Muon + fused AdamW as train_cli.py sets them up; tokens/s over timed steps after the
    compile's warm-up, and MFU against the device's peak bf16 FLOP/s (llm/runtime.py's table);
  - generation: that model with the KV cache, batch 1, a 16-token prompt, 256 new tokens, top-k 50: tokens/s and
    the time to the first token, through llm.sample (ids and events, as bench/generate_bench.py times them), and
    `transformers`' GPT-2 of the same shape on the same GPU when it is installed (nothing downloaded).
Uses only torch (and transformers if present): no gradio, no data files.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch

import generate_bench as gb
from llm.model import GPT, ModelConfig
from llm.optim import configure_optimizers
from llm.runtime import peak_flops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(config: ModelConfig, batch: int, steps: int, device: torch.device, compile_: bool) -> dict:
    """Training tokens/s of `config` on random tokens, after a warm-up that includes the compile."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    fwd = torch.compile(model) if compile_ else model
    opts = configure_optimizers(model, "muon", 6e-4, 0.1, (0.9, 0.95), 0.02, device.type)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    x = torch.randint(config.vocab_size, (batch, config.block_size), device=device)

    def step() -> None:
        with autocast:
            loss = fwd(x, x)[1]
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):  # the first compiles
        step()
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    tokens_per_s = steps * x.numel() / (time.perf_counter() - t0)
    peak = peak_flops(device)
    return {"params": model.num_params(), "tokens_per_s": tokens_per_s, "warmup_s": warm,
            "mfu": model.flops_per_token() * tokens_per_s / peak if peak else None, "model": model}


def generation(model: GPT, device: torch.device) -> dict:
    """Our sampler's tokens/s and first-token time, and transformers' on the same shape where installed."""
    model = model.eval()
    c = model.config
    tokenizer = gb.BenchTokenizer(c.vocab_size)
    prompt = torch.randint(0, c.vocab_size, (1, gb.PROMPT_LEN))
    ids = prompt[0].tolist()
    out = {}
    for name, events in (("ours, ids", False), ("ours, events", True)):
        run = functools.partial(gb.ours, model, tokenizer, ids, use_kv_cache=True, events=events)
        run()
        out[name] = gb.NEW_TOKENS / min(gb.best_time(run, 1) for _ in range(3))
    out["first token ms"] = statistics.median(
        gb.time_to_first_token(model, tokenizer, ids, repeats=5) for _ in range(3)) * 1e3
    try:
        hf_model = gb.hf_model(c.n_layer, c.n_head, c.n_embd, c.vocab_size)
    except ImportError:
        return out
    hf_model = hf_model.to(device)
    run = functools.partial(gb.hf, hf_model, prompt.to(device), use_cache=True)
    run()
    out["transformers"] = gb.NEW_TOKENS / min(gb.best_time(run, 1) for _ in range(3))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a tiny model and a few steps, on whatever device is here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("no CUDA GPU here: run with --smoke to check the script on this machine", file=sys.stderr)
        return 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.smoke:
        config = ModelConfig(vocab_size=512, block_size=gb.BLOCK_SIZE, n_layer=2, n_head=2, n_embd=64)
        batch, steps = 4, 3
    else:
        config = ModelConfig(vocab_size=32768, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
        batch, steps = 16, 30
    gb.BLOCK_SIZE = config.block_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; model {config.n_layer} x {config.n_embd}, context "
          f"{config.block_size}, vocabulary {config.vocab_size}", flush=True)
    t = train_speed(config, batch, steps, device, compile_=device.type == "cuda")
    g = generation(t["model"], device)
    mfu = f"{t['mfu']:.1%}" if t["mfu"] is not None else "n/a (peak unknown)"
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| parameters | {t['params'] / 1e6:.1f}M |")
    how = "bf16 autocast, compiled" if device.type == "cuda" else "fp32, eager"
    print(f"| training tokens/s ({how}, batch {batch} x {config.block_size}) | {t['tokens_per_s']:,.0f} |")
    print(f"| MFU (aim: 40% on an H100-class GPU) | {mfu} |")
    print(f"| warm-up (3 steps, the compile included) | {t['warmup_s']:.1f} s |")
    for key, value in g.items():
        unit = "" if key.endswith("ms") else " tokens/s"
        print(f"| generation, KV cache, {key} | {value:,.1f}{unit} |")
    if "transformers" in g:
        print(f"| ours (ids) / transformers | {g['ours, ids'] / g['transformers']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
