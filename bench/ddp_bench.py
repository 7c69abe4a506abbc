"""Data parallel on this machine: training tokens/s of one process against two (torchrun, gloo), the same global
batch, side by side in one run.

    python bench/ddp_bench.py [--corpus ../shared/data/tinyshakespeare.txt] [--steps 60] [--batch 32]

1 process:   batch --batch, all the cores' threads (torch's default);
2 processes: batch --batch / 2 each, the cores shared out (torchrun gives each OMP_NUM_THREADS = cores / 2).
Both train the defaults' 3 x 96 shape at context 128 (BPE), fp32, no compile, and neither evaluates until the end.
Tokens/s is the global tokens per step over the median step time (metrics.jsonl's `dt` on rank 0), the first
10 steps left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = ["--n-layer", "3", "--n-head", "4", "--n-embd", "96", "--block-size", "128", "--dropout", "0.1"]


def run(corpus: str, out: Path, procs: int, batch: int, steps: int) -> dict:
    flags = [str(ROOT / "train_cli.py"), "--corpus", corpus, "--out", str(out), *SHAPE, "--batch-size", str(batch),
             "--max-steps", str(steps), "--eval-interval", str(steps), "--eval-iters", "1", "--sample-tokens", "0",
             "--log-interval", "1", "--no-progress", "--no-compile", "--device", "cpu"]
    env = dict(os.environ)
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *flags]
        env["OMP_NUM_THREADS"] = str(max(os.cpu_count() // procs, 1))
    else:
        cmd = [sys.executable, *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{procs} process(es) failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dts = [r["dt"] for r in rows if r["kind"] == "train" and r["step"] > 10]
    tokens = json.loads((out / "last" / "meta.json").read_text())["tokens_per_step"]
    return {"procs": procs, "batch": batch, "tokens_per_step": tokens, "ms": 1000 * statistics.median(dts),
            "tok_s": tokens / statistics.median(dts)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32, help="the global batch, in sequences")
    args = p.parse_args()
    import torch

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.steps} steps, "
          f"global batch {args.batch} x 128 tokens")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(args.corpus, Path(tmp) / f"p{n}", n, args.batch // n, args.steps) for n in (1, 2)]
    one = results[0]["tok_s"]
    print("\n| processes | batch each | tokens a step | ms a step (median) | tokens/s | against 1 process |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['procs']} | {r['batch']} | {r['tokens_per_step']:,} | {r['ms']:.1f} | {r['tok_s']:,.0f} | "
              f"{r['tok_s'] / one:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
