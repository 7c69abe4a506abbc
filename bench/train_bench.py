"""Training speed and quality on tiny shakespeare, side by side in one run.

    python bench/train_bench.py [--corpus ../shared/data/tinyshakespeare.txt] [--skip-default-run]
    python bench/train_bench.py --skip-default-run --set n_layer=4 n_embd=128   # (b) with other settings

(a) reference: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, 128 dims, block 64, batch 12, learned positions,
    LayerNorm, GELU, AdamW lr 1e-3, warmup 100, cosine to 1e-4 over 2000 steps, dropout 0, random windows),
    character level;
(b) this project's defaults, character level, given the training time (a) took, with what train_cli.py's rule
    (llm/auto.py) picks for that text and budget;
(c) `python train_cli.py --corpus FILE` with nothing else (BPE, defaults, 5 minutes);
(d) the same with the settings train_cli.py had before issue 17 (PREVIOUS).
Prints val loss against training time for (a) and (b), the time each needs to reach 1.89, and (c)'s bits per byte.
Training time excludes evaluation, for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from llm.auto import auto_settings, measure_flops
from llm.checkpoint import read_metrics
from llm.model import ModelConfig
from llm.run import TrainConfig
from llm.train import train

TARGET = 1.89
# train_cli.py's flags for its settings before issue 17 (model quality): no dropout, context 64 x batch 32, no value
# embeddings, no average of the weights, BPE 1024 whatever the text, batches drawn at random
PREVIOUS = ["--dropout", "0", "--block-size", "64", "--batch-size", "32", "--no-value-embed", "--ema", "0",
            "--vocab-size", "1024", "--no-shuffle"]


def run(name: str, model_cfg: ModelConfig, cfg: TrainConfig) -> list[dict]:
    t = time.time()
    train(model_cfg, cfg, overwrite=True, progress=False, log=lambda s: None)
    rows = [r for r in read_metrics(cfg.out) if r["kind"] == "eval"]
    print(f"{name}: {rows[-1]['step']} steps, {rows[-1]['train_time']:.1f} s training "
          f"({time.time() - t:.1f} s with evals), final val {rows[-1]['val_loss']:.4f}", flush=True)
    return rows


def time_to(rows: list[dict], target: float) -> float | None:
    return next((r["train_time"] for r in rows if r["val_loss"] <= target), None)


def val_at(rows: list[dict], t: float) -> float:
    return min(r["val_loss"] for r in rows if r["train_time"] <= t * 1.001)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--skip-default-run", action="store_true", help="skip (c) and (d), the 5-minute BPE runs")
    p.add_argument("--keep", metavar="DIR", help="write (c)'s run there (the bundled model is its best/)")
    p.add_argument("--skip-reference", type=float, default=0.0,
                   help="seconds: skip (a) and give (b) this budget instead")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="change (b)'s settings (ModelConfig or TrainConfig fields), e.g. n_layer=4 n_embd=128")
    args = p.parse_args()
    model_set, train_set = {}, {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in ModelConfig.__dataclass_fields__ and key not in TrainConfig.__dataclass_fields__:
            p.error(f"--set {item}: {key!r} is not a ModelConfig or TrainConfig field")
        if key in ("corpus", "out", "time_budget", "max_steps"):
            p.error(f"--set {item}: the bench sets {key} itself")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a plain string, e.g. pos=learned
        (model_set if key in ModelConfig.__dataclass_fields__ else train_set)[key] = value
    try:
        ModelConfig(**model_set)
        TrainConfig(**train_set)
    except (TypeError, ValueError) as e:
        p.error(f"--set: {e}")
    corpus = str(Path(args.corpus).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="train_bench_"))
    common = dict(corpus=(corpus,), tokenizer="char", eval_iters=50, sample_tokens=0, seed=1337)

    ref_rows = []
    if not args.skip_reference:
        ref_model = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                                pos="learned", norm="layernorm", mlp="gelu", tie_embeddings=True,
                                value_embed=False)
        ref_train = TrainConfig(**common, out=str(tmp / "ref"), batch_size=12, lr=1e-3, min_lr=1e-4,
                                warmup_steps=100, max_steps=2000, optimizer="adamw", beta2=0.99, weight_decay=0.1,
                                grad_clip=1.0, eval_interval=100, ema=0.0, shuffle=False)
        ref_rows = run("(a) nanoGPT baby GPT", ref_model, ref_train)
    budget = args.skip_reference or ref_rows[-1]["train_time"]

    # (b) is what `train_cli.py --corpus FILE --tokenizer char --time-budget (a)'s time` would train: the configs'
    # defaults with llm/auto.py's choices for that text and budget on this machine (--set overrides them)
    given = {"tokenizer": "char", "time_budget": budget, **model_set, **train_set}
    chosen, why = auto_settings(given, Path(corpus).stat().st_size, measure_flops(torch.device("cpu")))
    print(f"(b) settings for {why}: {chosen}", flush=True)
    def_model = ModelConfig(**{**{k: v for k, v in chosen.items() if k in ModelConfig.__dataclass_fields__},
                               **model_set})
    def_train = TrainConfig(**{**common, "out": str(tmp / "default"), "time_budget": budget, "eval_interval": 25,
                               **{k: v for k, v in chosen.items() if k in TrainConfig.__dataclass_fields__},
                               **train_set})
    def_rows = run("(b) project default" + (f" with {' '.join(args.set)}" if args.set else ""),
                   def_model, def_train)

    print(f"\nval loss against training time (machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {__import__('torch').get_num_threads()})")
    print(f"{'seconds':>8} | {'(a) reference':>14} | {'(b) default':>12}")
    for frac in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0):
        t = budget * frac
        a = f"{val_at(ref_rows, t):.4f}" if ref_rows and any(r["train_time"] <= t * 1.001 for r in ref_rows) else "-"
        b = f"{val_at(def_rows, t):.4f}" if any(r["train_time"] <= t * 1.001 for r in def_rows) else "-"
        print(f"{t:8.1f} | {a:>14} | {b:>12}")
    t_ref, t_def = time_to(ref_rows, TARGET) if ref_rows else None, time_to(def_rows, TARGET)
    print(f"\ntime to val loss {TARGET}: reference {t_ref and f'{t_ref:.1f} s'}, default {t_def and f'{t_def:.1f} s'}"
          + (f" ({t_def / budget:.0%} of the reference's {budget:.1f} s)" if t_def else ""))
    if ref_rows:
        a, b = ref_rows[-1]["val_loss"], val_at(def_rows, budget)
        print(f"at equal time ({budget:.1f} s): reference {a:.4f}, default {b:.4f}, difference {a - b:.4f}")

    if not args.skip_default_run:
        print()
        for name, flags, out in (("(c) the defaults", [], Path(args.keep) if args.keep else tmp / "cli"),
                                 ("(d) the defaults before issue 17", PREVIOUS, tmp / "previous")):
            t = time.time()
            subprocess.run([sys.executable, str(ROOT / "train_cli.py"), "--corpus", corpus, "--out", str(out),
                            "--no-progress", "--overwrite", *flags], check=True, stdout=subprocess.DEVNULL)
            best = json.loads((out / "best" / "meta.json").read_text())
            last = [r for r in read_metrics(out) if r["kind"] == "eval"][-1]
            print(f"{name}: train_cli.py --corpus {Path(corpus).name} {' '.join(flags)}: best val bits per byte "
                  f"{best['bits_per_byte']:.4f} (val loss {best['val_loss']:.4f}) at step {best['step']}, last "
                  f"{last['bits_per_byte']:.4f} at step {last['step']}, {time.time() - t:.0f} s wall in all",
                  flush=True)


if __name__ == "__main__":
    main()
