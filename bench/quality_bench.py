"""Model quality for the same number of steps: the defaults against each architecture option, side by side.

    python bench/quality_bench.py [--corpus ../shared/data/tinyshakespeare.txt] [--steps 3300] [--seeds 1 2 3]
                                  [--variants default qk_norm softcap both dropout] [--time-budget SECONDS]

Each variant is `train_cli.py --corpus FILE`'s defaults (BPE) with one change, trained for --steps steps (what the
default reaches in 5 minutes on the project's 2-core machine: a step count, so the machine's load does not move
the result) with the time budget off; the table gives the validation bits per byte at the last step, the best one,
and the milliseconds per training step (timed, so that one does depend on the machine). Training is deterministic
on a CPU for a given seed. With --time-budget each variant trains for that many seconds instead (what a user's
run does; the result then depends on the machine's speed and load), its steps in the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.checkpoint import read_metrics
from llm.model import ModelConfig
from llm.run import TrainConfig
from llm.train import train

VARIANTS = {
    "default": {},
    "qk_norm": {"qk_norm": True},
    "softcap": {"logit_softcap": 15.0},
    "both": {"qk_norm": True, "logit_softcap": 15.0},
    "dropout": {"dropout": 0.1},
}


def run(corpus: str, changes: dict, steps: int, seed: int, out: Path, budget: float = 0.0) -> dict:
    model_cfg = dataclasses.replace(ModelConfig(), **changes)
    limit = {"max_steps": 0, "time_budget": budget, "eval_interval": 300} if budget else \
        {"max_steps": steps, "time_budget": 0.0, "eval_interval": max(steps // 10, 1)}
    cfg = TrainConfig(corpus=(corpus,), out=str(out), seed=seed, sample_tokens=0, compile=False, **limit)
    summary = train(model_cfg, cfg, overwrite=True, progress=False, log=lambda s: None)
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    return {"last": evals[-1]["bits_per_byte"], "best": min(r["bits_per_byte"] for r in evals),
            "ms_per_step": 1000 * summary["train_time"] / summary["step"], "steps": summary["step"],
            "gap": evals[-1]["val_loss"] - evals[-1]["train_loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--steps", type=int, default=3300)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds per variant instead of --steps")
    args = p.parse_args(argv)

    import torch

    rows = {}
    with tempfile.TemporaryDirectory(prefix="quality_bench-") as tmp:
        for name in args.variants:
            results = [run(args.corpus, VARIANTS[name], args.steps, seed, Path(tmp) / f"{name}-{seed}",
                           args.time_budget) for seed in args.seeds]
            rows[name] = results
            print(f"{name}: " + ", ".join(f"{r['last']:.4f}" for r in results) + " bits/byte", flush=True)
    print()
    limit = f"{args.time_budget:g} s each" if args.time_budget else f"{args.steps} steps"
    print(f"corpus {Path(args.corpus).name}, {limit}, seeds {args.seeds}; machine: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| variant | val bits/byte, last step | best | val - train loss at the end (nats) | ms per step | steps |")
    print("|---|---|---|---|---|---|")
    for name, results in rows.items():
        last = statistics.mean(r["last"] for r in results)
        spread = f" ({min(r['last'] for r in results):.4f}-{max(r['last'] for r in results):.4f})" \
            if len(results) > 1 else ""
        print(f"| {name} {VARIANTS[name] or ''} | {last:.4f}{spread} | "
              f"{statistics.mean(r['best'] for r in results):.4f} | {statistics.mean(r['gap'] for r in results):.3f} "
              f"| {statistics.mean(r['ms_per_step'] for r in results):.1f} | "
              f"{statistics.mean(r['steps'] for r in results):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
