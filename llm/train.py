"""The training loop: from a text corpus to best/ and last/ checkpoints, resumable bit for bit on CPU.

    train(model_config, train_config, resume=False) -> summary dict

Everything a run needs to continue exactly lives in OUT/last/train_state.pt: step, optimizer state and the RNG
states of torch (dropout), python, numpy and the batch generator. Evaluation draws its batches from a generator
seeded afresh each time, so it never disturbs training's randomness and every eval sees the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from llm.checkpoint import (CheckpointError, append_metrics, load_train_state, load_weights, read_config,
                            read_meta, resolve, save_checkpoint, TOKENIZER, WEIGHTS)
from llm.config import from_dict
from llm.data import get_batch, load_split, prepare, read_corpus
from llm.model import GPT, ModelConfig
from llm.optim import configure_optimizers, get_lr
from llm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

MAX_BAD_STEPS = 5  # non-finite losses in a row before a run gives up


@dataclass
class TrainConfig:
    corpus: tuple[str, ...] = ()
    out: str = ""
    tokenizer: str = "bpe"  # bpe | char
    vocab_size: int = 1024  # BPE target size (the char tokenizer takes what the corpus has)
    encoding_errors: str = "strict"  # strict | replace
    val_frac: float = 0.1
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-3  # AdamW (all parameters with --optimizer adamw; embeddings, head, norms with muon)
    muon_lr: float = 0.02  # Muon, for the matrices inside the blocks
    min_lr: float = 3e-4  # the end of the cosine; Muon's decays by the same ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    optimizer: str = "muon"  # adamw | muon
    max_steps: int = 0  # 0 = no step limit
    time_budget: float = 0.0  # seconds of training (evaluation not counted); 0 = none
    eval_interval: int = 100
    eval_iters: int = 20
    log_interval: int = 10
    sample_tokens: int = 64  # length of the text sample printed at each eval; 0 = none
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    # torch.compile; None = on CUDA only. On a 2-core CPU compiling costs 20-50 s of a 5-minute run, more than
    # the compiled steps save (bench/README.md, Training).
    compile: bool | None = None

    def __post_init__(self):
        checks = [
            (self.tokenizer in ("bpe", "char"), f"--tokenizer must be bpe or char, got {self.tokenizer!r}"),
            (self.optimizer in ("adamw", "muon"), f"--optimizer must be adamw or muon, got {self.optimizer!r}"),
            (self.device in ("auto", "cpu", "cuda", "mps"), f"--device must be auto, cpu, cuda or mps, got {self.device!r}"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"),
             f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"),
            (self.encoding_errors in ("strict", "replace"), "--encoding-errors must be strict or replace"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.muon_lr > 0 and math.isfinite(self.muon_lr), f"--muon-lr must be positive, got {self.muon_lr}"),
            (0 <= self.min_lr <= self.lr, f"--min-lr must be between 0 and --lr ({self.lr}), got {self.min_lr}"),
            (self.warmup_steps >= 0, f"--warmup-steps must be at least 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"--weight-decay must be at least 0, got {self.weight_decay}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)"),
            (self.grad_clip >= 0, f"--grad-clip must be at least 0 (0 = off), got {self.grad_clip}"),
            (self.max_steps >= 0, f"--max-steps must be at least 0 (0 = no limit), got {self.max_steps}"),
            (self.time_budget >= 0, f"--time-budget must be at least 0 seconds, got {self.time_budget}"),
            (self.eval_interval >= 1, f"--eval-interval must be at least 1, got {self.eval_interval}"),
            (self.eval_iters >= 1, f"--eval-iters must be at least 1, got {self.eval_iters}"),
            (self.log_interval >= 1, f"--log-interval must be at least 1, got {self.log_interval}"),
            (0 < self.val_frac < 1, f"--val-frac must be between 0 and 1 (exclusive), got {self.val_frac}"),
            (self.sample_tokens >= 0, "--sample-tokens must be at least 0"),
        ]
        if self.tokenizer == "bpe":
            checks.append((self.vocab_size >= 257, f"--vocab-size must be at least 257 for BPE (256 bytes + "
                                                   f"end-of-text), got {self.vocab_size}"))
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


# settings that may change when a run is resumed; everything else must match the checkpoint
RESUMABLE_CHANGES = {"max_steps", "time_budget", "eval_interval", "eval_iters", "log_interval", "sample_tokens",
                     "device", "dtype", "compile", "out"}


class TrainingError(RuntimeError):
    """A run that had to stop; one line for the user. Saved checkpoints are left as they were."""


# -----------------------------------------------------------------------------
# devices and precision

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("--device mps: MPS is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 autocast on GPUs that have it, fp16 (with a grad scaler) on older ones, fp32 on CPU and MPS.

    bf16 autocast on a CPU without native bf16 matmul is slower than fp32 (measured here), so CPU stays fp32
    unless asked.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12),
                       ("T4", 65e12), ("4090", 165e12), ("3090", 71e12)):
        if key in name:
            return flops
    return None


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def estimate_loss(model: GPT, splits: dict[str, np.ndarray], block_size: int, batch_size: int, eval_iters: int,
                  device: torch.device, autocast, seed: int) -> dict[str, float]:
    """Mean loss over `eval_iters` batches per split, drawn from a freshly seeded generator."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(seed)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(data, block_size, batch_size, gen, device)
            with autocast:
                _, loss = model(x, y)
            losses[k] = loss.float().item()
        out[name] = losses.mean().item()
    model.train(was_training)
    return out


def sample_text(model: GPT, tokenizer, max_new_tokens: int, seed: int) -> str:
    """A short sample for the log, from the start of a document."""
    from llm.sample import SampleConfig, generate

    was_training = model.training
    model.eval()
    try:
        cfg = SampleConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
        return "".join(e.text for e in generate(model, tokenizer, "\n", cfg))
    finally:
        model.train(was_training)


# -----------------------------------------------------------------------------
# the run

def _rng_state(batch_gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),  # weights_only cannot hold the tuple-of-tuples form
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "batch": batch_gen.get_state(),
    }


def _set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    batch_gen.set_state(state["batch"])


class _StopFlag:
    """First SIGINT/SIGTERM: finish the step, save last/, exit. Second: stop at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = 0

    def __call__(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, self)
        except ValueError:  # not the main thread: leave signals alone
            old = {}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def build_tokenizer(texts: list[str], cfg: TrainConfig, verbose: bool = True,
                    log: Callable[[str], None] = tqdm.write):
    """Train the run's tokenizer; its warnings (a corpus too small for the vocabulary) go to the log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if cfg.tokenizer == "char":
                tok = CharTokenizer.train("".join(texts))
            else:
                tok = Tokenizer.train(iter(texts), cfg.vocab_size, verbose=verbose)
        except ValueError as e:
            raise TrainingError(f"tokenizer: {e}") from None
    for w in caught:
        log(f"tokenizer: {w.message}")
    return tok


def check_resume(saved_model: ModelConfig, saved_train: TrainConfig, model_overrides: dict,
                 train_overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """Apply flags given on the command line to a resumed run; refuse those that conflict, listing them all."""
    diffs = [f"--{k.replace('_', '-')}: checkpoint has {getattr(saved_model, k)!r}, flag says {v!r}"
             for k, v in model_overrides.items() if k != "vocab_size" and getattr(saved_model, k) != v]
    diffs += [f"--{k.replace('_', '-')}: checkpoint has {getattr(saved_train, k)!r}, flag says {v!r}"
              for k, v in train_overrides.items() if k not in RESUMABLE_CHANGES and getattr(saved_train, k) != v]
    if diffs:
        raise TrainingError("--resume: these flags conflict with the checkpoint: " + "; ".join(diffs))
    changes = {k: v for k, v in train_overrides.items() if k in RESUMABLE_CHANGES}
    return saved_model, dataclasses.replace(saved_train, **changes)


def train(model_cfg: ModelConfig | None, cfg: TrainConfig, resume: bool = False, model_overrides: dict | None = None,
          train_overrides: dict | None = None, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = tqdm.write) -> dict:
    """Train, writing OUT/best, OUT/last and OUT/metrics.jsonl. Returns a summary of the run.

    With resume=True the configs come from OUT/last; `model_overrides` / `train_overrides` are the settings the
    user gave explicitly, checked against it.
    """
    out = Path(cfg.out)
    state = None
    if resume:
        try:
            last = resolve(out / "last")
            saved_model, saved_train = read_config(last)
            saved_train = from_dict(TrainConfig, saved_train)
            model_cfg, cfg = check_resume(saved_model, saved_train, model_overrides or {}, train_overrides or {})
            cfg = dataclasses.replace(cfg, out=str(out))
            state = load_train_state(last)
            tokenizer = load_tokenizer(last / TOKENIZER)
        except CheckpointError as e:
            raise TrainingError(f"--resume: {e}") from None
    elif not overwrite and any((out / n / "config.json").exists() for n in ("best", "last")):
        raise TrainingError(f"{out} already holds checkpoints: use --resume to continue that run, "
                            f"--overwrite to replace it, or --out for a new directory")

    device = pick_device(cfg.device)
    ptdtype = pick_dtype(cfg.dtype, device)
    autocast = (torch.autocast(device.type, dtype=ptdtype) if ptdtype != torch.float32
                else contextlib.nullcontext())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    texts, _ = read_corpus(list(cfg.corpus), cfg.encoding_errors)
    if not resume:
        tokenizer = build_tokenizer(texts, cfg, verbose=progress, log=log)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    info = prepare(texts, tokenizer, out, cfg.val_frac, min_tokens=model_cfg.block_size + 1)
    splits = {"train": load_split(out / "train.bin"), "val": load_split(out / "val.bin")}
    tokens_per_byte = info["val_tokens"] / info["val_bytes"]

    model = GPT(model_cfg).to(device)
    optimizers = configure_optimizers(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                      cfg.muon_lr, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=ptdtype == torch.float16)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    step, tokens_seen, train_time, best_val, bad_steps_total = 0, 0, 0.0, float("inf"), 0
    if state is not None:
        load_weights(model, last / WEIGHTS)  # copies into the tensors already on `device`
        for opt, sd in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        _set_rng_state(state["rng"], batch_gen)
        step, tokens_seen, train_time = state["step"], state["tokens_seen"], state["train_time"]
        best_val, bad_steps_total = state["best_val_loss"], state["bad_steps"]
        _truncate_metrics(out, step)
    elif overwrite:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    fwd = torch.compile(model) if use_compile else model
    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * model_cfg.block_size
    flops_per_step = model.flops_per_token() * tokens_per_step
    min_ratio = cfg.min_lr / cfg.lr
    time_budget = cfg.time_budget if cfg.time_budget or cfg.max_steps else 300.0  # neither: about 5 minutes

    def progress_of(step: int, train_time: float) -> float:
        """How far the cosine is: by steps it starts after the warmup (as nanoGPT's); under a time budget it
        spans the whole budget (the warmup is a few seconds of it). With both, whichever is further."""
        by_steps = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1) if cfg.max_steps else 0.0
        return max(by_steps, train_time / time_budget if time_budget else 0.0)

    def save(kind: str, val_loss: float | None, bpb: float | None) -> None:
        meta = {"step": step, "tokens_seen": tokens_seen, "val_loss": val_loss, "bits_per_byte": bpb,
                "train_time": train_time, "wall_time": time.time() - t_start + prior_wall,
                "corpus": list(cfg.corpus), "device": str(device), "params": model.num_params(),
                "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type}
        train_state = None
        if kind == "last":
            train_state = {"step": step, "tokens_seen": tokens_seen, "train_time": train_time,
                           "best_val_loss": best_val, "bad_steps": bad_steps_total,
                           "optimizers": [o.state_dict() for o in optimizers], "rng": _rng_state(batch_gen)}
        save_checkpoint(out / kind, model, tokenizer, cfg, meta, train_state)

    def evaluate() -> dict:
        nonlocal best_val
        losses = estimate_loss(fwd, splits, model_cfg.block_size, cfg.batch_size, cfg.eval_iters, device,
                               autocast, cfg.seed + 1)
        bpb = losses["val"] * tokens_per_byte / math.log(2)
        row = {"kind": "eval", "step": step, "train_loss": losses["train"], "val_loss": losses["val"],
               "val_ppl": math.exp(min(losses["val"], 50)), "bits_per_byte": bpb,
               "tokens_seen": tokens_seen, "train_time": train_time,
               "tokens_per_sec": tokens_seen_run / max(train_time - start_train_time, 1e-9),
               "lr": optimizers[0].param_groups[0]["lr"]}
        if peak:
            row["mfu"] = flops_per_step * (step - start_step) / max(train_time - start_train_time, 1e-9) / peak
        improved = losses["val"] < best_val
        if improved:
            best_val = losses["val"]
        if bad_in_a_row == 0 and math.isfinite(losses["val"]):  # never save a run that is going wrong
            save("last", losses["val"], bpb)  # last first: it carries best_val, so a crash cannot lose track
            if improved:
                save("best", losses["val"], bpb)
        if cfg.sample_tokens:
            row["sample"] = sample_text(model, tokenizer, cfg.sample_tokens, cfg.seed)
        append_metrics(out, row)
        log(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}, {bpb:.3f} bits/byte"
            + (" (best)" if improved else "") + (f"\n{row['sample']}" if cfg.sample_tokens else ""))
        return row

    prior_wall = read_meta(out / "last").get("wall_time", 0.0) if resume else 0.0
    t_start = time.time()
    start_step, start_train_time, tokens_seen_run, bad_in_a_row = step, train_time, 0, 0
    last_eval = None
    bar = tqdm(total=cfg.max_steps or None, initial=step, unit="step", disable=not progress, dynamic_ncols=True)
    stop = _StopFlag()
    fwd.train()
    with stop.installed():
        while not (stop.signum or cfg.max_steps and step >= cfg.max_steps or time_budget and train_time >= time_budget):
            t0 = time.perf_counter()
            mult = get_lr(step, progress_of(step, train_time), cfg.warmup_steps, min_ratio)
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * mult
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                x, y = get_batch(splits["train"], model_cfg.block_size, cfg.batch_size, batch_gen, device)
                try:
                    with autocast:
                        _, loss = fwd(x, y)
                except Exception as e:  # compilation happens at the first call; no compiler: run eager
                    if fwd is model:
                        raise
                    log(f"torch.compile failed ({type(e).__name__}); continuing without it")
                    fwd = model
                    with autocast:
                        _, loss = fwd(x, y)
                scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
            loss = (loss_sum / cfg.grad_accum).item()
            for opt in optimizers:
                scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")).item()
            if math.isfinite(loss) and math.isfinite(norm):
                for opt in optimizers:
                    scaler.step(opt)
                bad_in_a_row = 0
            else:  # skip the update; the weights stay as they were
                bad_in_a_row += 1
                bad_steps_total += 1
            scaler.update()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            tokens_seen_run += tokens_per_step
            dt = time.perf_counter() - t0
            train_time += dt
            if bad_in_a_row >= MAX_BAD_STEPS:
                bar.close()
                raise TrainingError(f"the loss or gradient was not finite for {MAX_BAD_STEPS} steps in a row "
                                    f"(up to step {step}); stopped with the saved checkpoints untouched. "
                                    f"Try a lower --lr or --grad-clip 1.0")
            if step % cfg.log_interval == 0:
                append_metrics(out, {"kind": "train", "step": step, "loss": loss, "grad_norm": norm,
                                     "lr": optimizers[0].param_groups[0]["lr"], "dt": dt})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
            if step % cfg.eval_interval == 0:
                last_eval = evaluate()
        if stop.signum:  # asked to stop: save where we are, skip the final evaluation
            prev = last_eval or {}
            save("last", prev.get("val_loss"), prev.get("bits_per_byte"))
        elif last_eval is None or last_eval["step"] != step:
            last_eval = evaluate()
    bar.close()
    best = read_meta(out / "best") if (out / "best").exists() else {}
    return {"out": str(out), "step": step, "interrupted": stop.signum, "best_val_loss": best.get("val_loss"),
            "best_bits_per_byte": best.get("bits_per_byte"), "last_val_loss": (last_eval or {}).get("val_loss"),
            "train_time": train_time, "bad_steps": bad_steps_total, "params": model.num_params()}


def _truncate_metrics(out: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint (a crash between an eval and the next save)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
