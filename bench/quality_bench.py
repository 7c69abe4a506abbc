"""Model quality for the same number of steps: the defaults, the defaults with each of their changes removed in
turn, and the options left off, side by side.

    python bench/quality_bench.py [--corpus ../shared/data/tinyshakespeare.txt | stdlib] [--steps 1500]
                                  [--seeds 1 2 3] [--variants default no_dropout with_qk_norm ...]
                                  [--time-budget SECONDS] [--jobs 2]

Each variant is `train_cli.py --corpus FILE`'s defaults (BPE, at the vocabulary its rule picks for the text) with
one change, trained for --steps steps (what the default reaches in 5 minutes on the project's 2-core machine: a
step count, so the machine's load does not move the result) with the time budget off. "no_NAME" is the defaults
with one of CHANGES undone (its value before issue 17), "with_NAME" the defaults with one of OPTIONS turned on,
"previous" the defaults before issue 17. The table gives the validation bits per byte at the last step and the best
one, the gap between validation and training loss, and the milliseconds per training step (timed, so that one does
depend on the machine; with --jobs 2 two runs share the machine, so time the steps in a run of their own). Training
is deterministic on a CPU for a given seed and thread count. With --time-budget each variant trains for that many
seconds instead (what a user's run does; the result then depends on the machine's speed and load), its steps in the
table.

--corpus stdlib: the second corpus of the issue, the Python standard library's *.py files sorted by path, the first
2 MB (UTF-8), built in a temporary file from this interpreter's own library.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# what issue 17 changed in the defaults, each with its value before: "no_NAME" undoes one
CHANGES = {
    "dropout": {"dropout": 0.0},  # on the residual stream only: on the attention weights too costs 20% a step here
    "context": {"block_size": 64, "batch_size": 32},  # the same tokens per step
    "ema": {"ema": 0.0},
    "vocab": {"vocab_size": 1024},  # the rule's vocabulary for the text (llm/auto.py: 8192 for 1.1 MB) undone
    "shuffle": {"shuffle": False},
}
# options that stay off: "with_NAME" turns one on (or sets another value)
OPTIONS = {
    "value_embed": {"value_embed": True},  # a default of issue 17 until the ablation's three seeds (bench/README.md)
    "qk_norm": {"qk_norm": True},
    "softcap": {"logit_softcap": 15.0},
    "attn_dropout": {"attn_dropout": 0.1},
    "x0_mix": {"x0_mix": True},
    "unet": {"unet": True},  # at 3 layers one skip: block 0's output into block 2
    "relu2": {"mlp": "relu2"},
    "untied": {"tie_embeddings": False},
    "dropout_0.2": {"dropout": 0.2},
    "4x128_dropout_0.2": {"n_layer": 4, "n_embd": 128, "dropout": 0.2},  # more capacity, more regularization
    "wd_0": {"weight_decay": 0.0},
    "wd_0.5": {"weight_decay": 0.5},  # a text read 20 times: weight decay as the data-bound recipes tune it
    "wd_1": {"weight_decay": 1.0},
    "ngram": {"ngram_embed": 16384},  # character level's n-gram table (llm/auto.py): at BPE 8192 it memorizes
    "vocab_512": {"vocab_size": 512},
    "vocab_2048": {"vocab_size": 2048},
    "vocab_8192": {"vocab_size": 8192},  # what the rule picks for 1.1 MB: for a text of another size
    # the learning rates and warmup around the defaults (AdamW's lr for embeddings and head, cosine to a tenth)
    "muon_lr_0.03": {"muon_lr": 0.03},
    "muon_lr_0.015": {"muon_lr": 0.015},
    "lr_6e-3": {"lr": 6e-3},  # each cosine to a tenth of its lr (min_lr's default)
    "lr_1.5e-3": {"lr": 1.5e-3},
    "warmup_0": {"warmup_steps": 0},
    "warmup_100": {"warmup_steps": 100},
}
VARIANTS = {"default": {}, **{f"no_{k}": v for k, v in CHANGES.items()}, **{f"with_{k}": v for k, v in OPTIONS.items()},
            "previous": {k: v for change in CHANGES.values() for k, v in change.items()}}
STDLIB_BYTES = 2_000_000


def stdlib_corpus(path: Path) -> Path:
    """The standard library's *.py files, sorted by path, concatenated; the first 2 MB (cut at a line end)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for f in sorted(p for p in lib.rglob("*.py") if "site-packages" not in p.parts):
        text = f.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode())
        if size >= STDLIB_BYTES:
            break
    data = "".join(parts).encode()[:STDLIB_BYTES]
    path.write_bytes(data[: data.rfind(b"\n") + 1])
    return path


def run(corpus: str, changes: dict, steps: int, seed: int, out: Path, budget: float = 0.0) -> dict:
    """One training run with the defaults plus `changes`; its figures."""
    from llm.auto import bpe_vocab
    from llm.checkpoint import read_metrics
    from llm.model import ModelConfig
    from llm.run import TrainConfig
    from llm.train import train

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    changes = {"vocab_size": bpe_vocab(Path(corpus).stat().st_size), **changes}  # what train_cli.py's rule picks
    model_cfg = ModelConfig(**{k: v for k, v in changes.items() if k in model_fields})
    limit = {"max_steps": 0, "time_budget": budget, "eval_interval": 300} if budget else \
        {"max_steps": steps, "time_budget": 0.0, "eval_interval": max(steps // 10, 1)}
    cfg = TrainConfig(corpus=(corpus,), out=str(out), seed=seed, sample_tokens=0, compile=False, **limit,
                      **{k: v for k, v in changes.items() if k not in model_fields or k == "vocab_size"})
    summary = train(model_cfg, cfg, overwrite=True, progress=False, log=lambda s: None)
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    return {"last": evals[-1]["bits_per_byte"], "best": min(r["bits_per_byte"] for r in evals),
            "ms_per_step": 1000 * summary["train_time"] / summary["step"], "steps": summary["step"],
            "gap": evals[-1]["val_loss"] - evals[-1]["train_loss"]}


def run_apart(corpus: str, name: str, steps: int, seed: int, out: Path, budget: float, threads: int) -> dict:
    """run() in a process of its own with `threads` torch threads (so that --jobs runs share the cores)."""
    code = (f"import json, sys, torch; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r});"
            f"torch.set_num_threads({threads}); import quality_bench as q; from pathlib import Path;"
            f"print(json.dumps(q.run({corpus!r}, q.VARIANTS[{name!r}], {steps}, {seed}, Path({str(out)!r}), "
            f"{budget})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--variants", nargs="+", default=["default", *(f"no_{k}" for k in CHANGES), "previous"],
                   choices=list(VARIANTS))
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds per variant instead of --steps")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores / jobs threads")
    args = p.parse_args(argv)

    import torch

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(name, seed) for name in args.variants for seed in args.seeds]
    with tempfile.TemporaryDirectory(prefix="quality_bench-") as tmp:
        corpus = str(stdlib_corpus(Path(tmp) / "stdlib.py.txt")) if args.corpus == "stdlib" else args.corpus
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {job: pool.submit(run_apart, corpus, job[0], args.steps, job[1],
                                        Path(tmp) / f"{job[0]}-{job[1]}", args.time_budget, threads) for job in jobs}
            for (name, seed), f in futures.items():
                print(f"{name} seed {seed}: {f.result()['last']:.4f} bits/byte", flush=True)
        rows = {name: [futures[(name, s)].result() for s in args.seeds] for name in args.variants}
    print()
    limit = f"{args.time_budget:g} s each" if args.time_budget else f"{args.steps} steps"
    print(f"corpus {'stdlib (first 2 MB of *.py)' if args.corpus == 'stdlib' else Path(args.corpus).name}, {limit}, "
          f"seeds {args.seeds}, {args.jobs} run(s) at a time with {threads} thread(s) each; machine: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print()
    print("| variant | changes | val bits/byte, last step | best | val - train loss at the end (nats) | ms per step "
          "| steps |")
    print("|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        last = statistics.mean(r["last"] for r in results)
        spread = f" ({min(r['last'] for r in results):.4f}-{max(r['last'] for r in results):.4f})" \
            if len(results) > 1 else ""
        changes = ", ".join(f"{k} {v}" for k, v in VARIANTS[name].items())
        print(f"| {name} | {changes} | {last:.4f}{spread} | {statistics.mean(r['best'] for r in results):.4f} | "
              f"{statistics.mean(r['gap'] for r in results):.3f} | "
              f"{statistics.mean(r['ms_per_step'] for r in results):.1f} | "
              f"{statistics.mean(r['steps'] for r in results):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
