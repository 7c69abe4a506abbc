"""The training loop: from a text corpus to best/ and last/ checkpoints, resumable bit for bit on CPU.

    train(model_config, train_config, resume=False) -> summary dict: the loop, over these named steps:
    start_run(...) -> Run          a new run, or the one saved in OUT/last (resume): llm/run.py
    train_step(run)                one optimisation step
    evaluate(run, save)            the losses and a sample; saves last/ and, when better, best/
    save_run(run, kind, ...)       OUT/best or OUT/last as the run is now

The run's mutable state is one dataclass, RunState (llm/run.py). OUT/last/train_state.pt holds it, with the
optimizer state and the RNG states of torch (dropout), python, numpy and the batch generator, so a resumed run
continues exactly. Evaluation draws its batches from a generator seeded afresh each time, so it never disturbs
training's randomness and every eval sees the same batches. Errors name settings by field (`lr`); train_cli.py
shows flags. Under torchrun (llm/dist.py) every rank runs this loop on its own batches; DDP averages the
gradients, the ranks agree on when to stop, and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from llm.checkpoint import append_metrics, read_meta, run_lock, save_checkpoint
from llm.corpus import corpus_from
from llm.data import get_batch
from llm.dist import Dist, peers_lost
from llm.model import GPT, ModelConfig
from llm.optim import get_lr
from llm.run import Run, TrainConfig, TrainingError, start_run
from llm.runtime import StopFlag, peak_flops, rng_state
from llm.sample import NonFiniteScores, sample_text

MAX_BAD_STEPS = 5  # non-finite losses in a row before a run gives up
OVERFIT_RISE = 0.01  # nats per token: a validation loss this far above the last evaluation's is rising


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def estimate_loss(model: GPT, splits: dict[str, np.ndarray], block_size: int, batch_size: int, eval_iters: int,
                  device: torch.device, autocast, seed: int, dist: Dist | None = None) -> dict[str, float]:
    """Mean loss over `eval_iters` batches per split, drawn from a freshly seeded generator. Under torchrun each
    rank computes its share of the same batches (k % world == rank), so the figure is one process's."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(seed)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(data, block_size, batch_size, gen, device)  # drawn on every rank: the same sequence
            if k % dist.world != dist.rank:
                continue
            with autocast:
                logits, loss = model(x, y)
            # a finite loss can hide non-finite scores (one row of inf logits): such a model is not worth saving
            losses[k] = loss.float().item() if torch.isfinite(logits).all() else math.nan
        out[name] = dist.sum(losses).mean().item()
    model.train(was_training)
    return out


# -----------------------------------------------------------------------------
# the steps of the loop

def train_step(run: Run) -> tuple[float, float, float]:
    """One optimisation step (grad_accum micro-batches) -> (loss, gradient norm, seconds). A non-finite loss or
    gradient skips the update: the weights stay as they were, and the state counts it."""
    cfg, state, t0 = run.cfg, run.state, time.perf_counter()
    mult = get_lr(state.step, run.progress(), cfg.warmup_steps, cfg.min_lr / cfg.lr)
    for opt in run.optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * mult
    loss_sum = 0.0
    for micro in range(cfg.grad_accum):
        x, y = run.batch(micro)
        # under torchrun the ranks average their gradients once a step, in the last micro-batch's backward
        with run.ddp.no_sync() if run.ddp and micro < cfg.grad_accum - 1 else contextlib.nullcontext(), peers_lost():
            loss = _forward(run, x, y)
            run.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    loss = run.dist.mean(loss_sum / cfg.grad_accum).item()  # every rank's: the ranks skip a step together
    for opt in run.optimizers:
        run.scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or float("inf")).item()
    finite = math.isfinite(loss) and math.isfinite(norm)
    if finite:
        for opt in run.optimizers:
            run.scaler.step(opt)
        run.update_ema()
    run.scaler.update()
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    state.step += 1
    state.tokens_seen += run.tokens_per_step
    state.train_time += dt
    state.bad_steps += not finite
    return loss, norm, dt


def _forward(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss; a compiled model compiles at its first call, and without a compiler runs eager."""
    try:
        with run.autocast:
            return run.fwd(x, y)[1]
    except Exception as e:
        eager = run.ddp or run.model  # (under torchrun the eager model is still the DDP one)
        if run.fwd is eager:
            raise
        run.log(f"torch.compile failed ({type(e).__name__}); continuing without it")
        run.fwd = eager
        with run.autocast:
            return run.fwd(x, y)[1]


def finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(p.isfinite().all()) for p in model.parameters())


def evaluate(run: Run, save: bool) -> dict:
    """Estimate the losses, log them (and a sample), and when `save`, write last/ and, if the validation loss
    improved, best/. Returns the metrics row."""
    with run.averaged():  # with cfg.ema, the average is what is measured, sampled and saved
        return _evaluate(run, save)


def _evaluate(run: Run, save: bool) -> dict:
    cfg, state = run.cfg, run.state
    losses = estimate_loss(run.model if run.ddp else run.fwd, run.splits, run.model_cfg.block_size, cfg.batch_size,
                           cfg.eval_iters, run.device, run.autocast, cfg.seed + 1, run.dist)
    bpb = losses["val"] * run.tokens_per_byte / math.log(2)
    seconds = max(state.train_time - run.start.train_time, 1e-9)
    row = {"kind": "eval", "step": state.step, "train_loss": losses["train"], "val_loss": losses["val"],
           "val_ppl": math.exp(min(losses["val"], 50)), "bits_per_byte": bpb,
           "tokens_seen": state.tokens_seen, "train_time": state.train_time,
           "tokens_per_sec": (state.step - run.start.step) * run.tokens_per_step / seconds,
           "lr": run.optimizers[0].param_groups[0]["lr"]}
    if peak := peak_flops(run.device):
        row["mfu"] = run.model.flops_per_token() * run.tokens_per_step * (state.step - run.start.step) / seconds / peak
    # never save a run that is going wrong: a non-finite loss, weight, or score (the sample's decode steps see
    # scores forward does not: huge weights overflow where the decoder folds the norms' gains in)
    sound = math.isfinite(losses["val"]) and finite_weights(run.model)
    if cfg.sample_tokens and sound and run.dist.main:
        try:
            row["sample"] = sample_text(run.model, run.tokenizer, cfg.sample_tokens, cfg.seed, prompt="\n")
        except NonFiniteScores:
            sound = False
    sound = not run.dist.any(not sound)  # (rank 0's sample decides for all)
    improved = save and sound and losses["val"] < state.best_val_loss  # the best saved, not the best seen
    if improved:
        state.best_val_loss = losses["val"]
    if save and sound:
        save_run(run, "last", losses["val"], bpb)  # last first: it carries best_val_loss, so a crash cannot lose track
        if improved:
            save_run(run, "best", losses["val"], bpb)
    if run.dist.main:
        append_metrics(run.out, row)
    warn_overfit(run, losses)
    note = ((" (best)" if improved else "") if save and sound else " (not saved: "
            + ("the weights or the scores are not finite)" if not sound else "the last steps' loss was not finite)"))
    run.log(f"step {state.step}: train {losses['train']:.4f}, val {losses['val']:.4f}, {bpb:.3f} bits/byte{note}"
            + (f"\n{row['sample']}" if "sample" in row else ""))
    return row


def warn_overfit(run: Run, losses: dict[str, float]) -> None:
    """Warn once per session when the validation loss rises while the training loss falls: the model has begun
    to memorize its text. The settings to turn are marked `name` (train_cli.py shows them as flags)."""
    prev, run.last_losses = run.last_losses, losses
    if run.warned_overfit or prev is None or not all(map(math.isfinite, (*losses.values(), *prev.values()))):
        return
    if losses["val"] > prev["val"] + OVERFIT_RISE and losses["train"] < prev["train"]:
        run.warned_overfit = True
        c = run.model.config
        dropout = f"`dropout` 0.1 (now {c.dropout:g})" if c.dropout < 0.1 else f"`dropout` above {c.dropout:g}"
        vocab = f", a smaller vocabulary (`vocab_size`, now {run.cfg.vocab_size})" if run.cfg.tokenizer == "bpe" else ""
        table = ", `ngram_embed` 0 (no n-gram table)" if c.ngram_embed else ""
        run.log(f"warning: overfitting: the validation loss rose ({prev['val']:.4f} -> {losses['val']:.4f}) while "
                f"the training loss fell ({prev['train']:.4f} -> {losses['train']:.4f}): the model has begun to "
                f"memorize its text. Fewer steps (`max_steps` or `time_budget`), {dropout}, a smaller model "
                f"(`n_layer`, `n_embd`){vocab}{table} or more text narrow the gap; best/ keeps the lowest validation "
                "loss.")


def save_run(run: Run, kind: str, val_loss: float | None, bpb: float | None) -> None:
    """Write OUT/best or OUT/last (with the train state) for the run as it is now. Under torchrun every rank
    calls it for last/ (rank 0 gathers their random states) and rank 0 alone writes."""
    rngs = run.dist.gather(rng_state(run.batch_gen)) if kind == "last" else None
    if not run.dist.main:
        return
    s, device = run.state, run.device
    meta = {"step": s.step, "tokens_seen": s.tokens_seen, "val_loss": val_loss, "bits_per_byte": bpb,
            "train_time": s.train_time, "wall_time": time.time() - run.t_start + run.prior_wall,
            "corpus": list(run.cfg.corpus), "device": str(device), "params": run.model.num_params(),
            "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "world_size": run.dist.world, "tokens_per_step": run.tokens_per_step}
    train_state = None
    if kind == "last":  # with where the corpus is, for resuming: config.json and meta.json keep names only
        train_state = {**dataclasses.asdict(s), "optimizers": [o.state_dict() for o in run.optimizers],
                       "rng": rngs[0], "corpus": corpus_from(run.out, run.cfg.corpus)}
        if run.dist.active:  # each rank's own, to resume with as many
            train_state.update(world_size=run.dist.world, rng_ranks=rngs)
        if run.raw is not None:  # the model holds the average: keep its own weights to resume from
            train_state["raw_weights"] = [r.cpu() for r in run.raw]
    save_checkpoint(run.out / kind, run.model, run.tokenizer, run.cfg, meta, train_state)


# -----------------------------------------------------------------------------
# the loop

def train(model_cfg: ModelConfig | None, cfg: TrainConfig, resume: bool = False, model_overrides: dict | None = None,
          train_overrides: dict | None = None, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = tqdm.write, evaluate_on_stop: bool = False, deadline: float | None = None,
          halt: Callable[[], bool] | None = None, dist: Dist | None = None) -> dict:
    """Train, writing OUT/best, OUT/last and OUT/metrics.jsonl. Returns a summary of the run.

    With resume=True the configs come from OUT/last; `model_overrides` / `train_overrides` are the settings the
    user gave explicitly, checked against it. A stop signal (SIGINT, SIGTERM), or `halt()` turning true, saves
    last/ at once; with evaluate_on_stop (the page's Stop button) it evaluates first, saving last/ and, if better,
    best/. At `deadline` (time.monotonic()) the run is cut: last/ saved, no evaluation, to resume exactly (a slice
    of a ZeroGPU call).
    """
    dist = dist or Dist()  # (one process, unless torchrun started this one)
    with run_lock(cfg.out) if dist.main else contextlib.nullcontext():  # (rank 0 writes for all)
        run = start_run(model_cfg, cfg, resume, model_overrides, train_overrides, overwrite, progress, log, dist)
        return train_loop(run, progress and dist.main, evaluate_on_stop, deadline, halt)


def train_loop(run: Run, progress: bool, evaluate_on_stop: bool = False, deadline: float | None = None,
               halt: Callable[[], bool] | None = None) -> dict:
    """The loop: steps, logs and evaluations until the run is done, asked to stop, or cut; a summary of it."""
    cfg, state, stop = run.cfg, run.state, StopFlag()
    bar = tqdm(total=cfg.max_steps or None, initial=state.step, unit="step", disable=not progress, dynamic_ncols=True)
    bad_in_a_row, last_eval, cut = 0, None, False
    run.fwd.train()
    with stop.installed():
        while True:
            if run.dist.active:  # the ranks go on together: one clock (the slowest's, for the schedule and the
                # time budget) and one stop signal. (halt and deadline are the page's, for one process.)
                agreed = run.dist.max(torch.tensor([stop.signum, state.train_time], dtype=torch.float64))
                stop.signum, state.train_time = int(agreed[0]), float(agreed[1])
            done = run.done()
            if not done and halt is not None and halt():
                stop.signum = -1  # as a stop signal would
            # (after a step at least: a slice whose start-up took it all still makes progress)
            cut = not (done or stop.signum) and deadline is not None and time.monotonic() >= deadline \
                and state.step > run.start.step
            if done or stop.signum or cut:
                break
            loss, norm, dt = train_step(run)
            bad_in_a_row = 0 if math.isfinite(loss) and math.isfinite(norm) else bad_in_a_row + 1
            if bad_in_a_row >= MAX_BAD_STEPS:
                bar.close()
                clip = " or `grad_clip` 1.0" if not 0 < cfg.grad_clip <= 1 else ""
                raise TrainingError(f"the loss or gradient was not finite for {MAX_BAD_STEPS} steps in a row "
                                    f"(up to step {state.step}); stopped with the saved checkpoints untouched. "
                                    f"Try a lower `lr`{clip}")
            if state.step % cfg.log_interval == 0 and run.dist.main:
                append_metrics(run.out, {"kind": "train", "step": state.step, "loss": loss, "grad_norm": norm,
                                         "lr": run.optimizers[0].param_groups[0]["lr"], "dt": dt,
                                         "train_time": state.train_time})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{run.tokens_per_step / dt:,.0f}", refresh=False)
            if state.step % cfg.eval_interval == 0:
                last_eval = evaluate(run, save=bad_in_a_row == 0)
        if (cut or stop.signum and not evaluate_on_stop) and finite_weights(run.model):  # where we are, no evaluation
            with run.averaged():
                save_run(run, "last", (last_eval or {}).get("val_loss"), (last_eval or {}).get("bits_per_byte"))
        elif last_eval is None or last_eval["step"] != state.step:
            last_eval = evaluate(run, save=bad_in_a_row == 0)
    bar.close()
    best = read_meta(run.out / "best") if run.dist.main and (run.out / "best").exists() else {}
    return {"out": str(run.out), "step": state.step, "interrupted": stop.signum, "cut": cut,
            "best_val_loss": best.get("val_loss"),
            "best_bits_per_byte": best.get("bits_per_byte"), "last_val_loss": (last_eval or {}).get("val_loss"),
            "train_time": state.train_time, "bad_steps": state.bad_steps, "params": run.model.num_params()}
