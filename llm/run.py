"""A training run's settings and state, and how a session starts one: new, or resumed from OUT/last.

    TrainConfig                    the training settings (stored in config.json); errors name fields
    RunState                       what changes as the run goes (stored in last/train_state.pt)
    Run                            what one session works with: data, model, optimizers, the state
    start_run(...) -> Run          a new run in OUT, or the one saved in OUT/last (resume), checked
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm.checkpoint import (DATA_INFO, METRICS, STATE, TOKENIZER, TRAIN_BIN, VAL_BIN, WEIGHTS, CheckpointError,
                            check_sizes, has_checkpoints, load_train_state, load_weights, read_config,
                            read_data_info, read_meta, resolve, truncate_metrics)
from llm.config import FieldNames, SettingError, from_dict, to_dict
from llm.corpus import Corpus, DataError, corpus_at, is_local, open_corpus, resolve_corpus
from llm.data import Epochs, data_key, get_batch, load_split, prepare, windows
from llm.dist import Dist
from llm.model import GPT, ModelConfig
from llm.optim import configure_optimizers
from llm.runtime import pick_device, pick_dtype, set_rng_state, vocab_multiple
from llm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

# the TrainConfig fields that take one of a few words (train_cli.py's choices)
CHOICES = {"tokenizer": ("bpe", "char"), "encoding_errors": ("strict", "replace"), "optimizer": ("adamw", "muon"),
           "device": ("auto", "cpu", "cuda", "mps"), "dtype": ("auto", "float32", "bfloat16", "float16")}


@dataclass
class TrainConfig:
    corpus: tuple[str, ...] = ()
    out: str = ""
    tokenizer: str = "bpe"  # bpe | char
    vocab_size: int = 1024  # BPE target size (the char tokenizer takes what the corpus has)
    encoding_errors: str = "strict"  # strict | replace
    val_frac: float = 0.1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3  # AdamW (all parameters with --optimizer adamw; embeddings, head, norms with muon)
    muon_lr: float = 0.02  # Muon, for the matrices inside the blocks
    min_lr: float | None = None  # the end of the cosine (None: a tenth of lr); Muon's decays by the same ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    # an exponential moving average of the weights, with this decay per step, is what evaluations measure and
    # checkpoints hold (last/train_state.pt keeps the raw weights to resume from); 0 = off
    ema: float = 0.99
    # read the text in epochs: every window at stride block_size once per epoch, in a random order, from a random
    # offset (False: each batch's windows drawn at random, some repeated and some left out of an epoch)
    shuffle: bool = True
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
    # torch.compile; None = on CUDA only: on a small CPU, compiling costs more of a short run than the compiled
    # steps save (bench/README.md, Training)
    compile: bool | None = None

    def __post_init__(self):
        if self.min_lr is None and isinstance(self.lr, (int, float)):  # a run given only `lr` ends a tenth down
            self.min_lr = float(f"{self.lr / 10:.12g}")  # 3e-4, not 0.00030000000000000003 (cards, resume checks)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise SettingError(f"`{name}` must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        checks = [
            (self.batch_size >= 1, f"`batch_size` must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"`grad_accum` must be at least 1, got {self.grad_accum}"),
            (self.lr > 0 and math.isfinite(self.lr), f"`lr` must be a positive number, got {self.lr}"),
            (self.muon_lr > 0 and math.isfinite(self.muon_lr), f"`muon_lr` must be positive, got {self.muon_lr}"),
            (0 <= self.min_lr <= self.lr, f"`min_lr` must be between 0 and `lr` ({self.lr}), got {self.min_lr}"),
            (self.warmup_steps >= 0, f"`warmup_steps` must be at least 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"`weight_decay` must be at least 0, got {self.weight_decay}"),
            (0 <= self.ema < 1, f"`ema` must be in [0, 1) (0 = off), got {self.ema}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)"),
            (self.grad_clip >= 0, f"`grad_clip` must be at least 0 (0 = off), got {self.grad_clip}"),
            (self.max_steps >= 0, f"`max_steps` must be at least 0 (0 = no limit), got {self.max_steps}"),
            (self.time_budget >= 0, f"`time_budget` must be at least 0 seconds, got {self.time_budget}"),
            (self.eval_interval >= 1, f"`eval_interval` must be at least 1, got {self.eval_interval}"),
            (self.eval_iters >= 1, f"`eval_iters` must be at least 1, got {self.eval_iters}"),
            (self.log_interval >= 1, f"`log_interval` must be at least 1, got {self.log_interval}"),
            (0 < self.val_frac < 1, f"`val_frac` must be between 0 and 1 (exclusive), got {self.val_frac}"),
            (self.sample_tokens >= 0, "`sample_tokens` must be at least 0"),
        ]
        if self.tokenizer == "bpe":
            checks.append((self.vocab_size >= 257, f"`vocab_size` must be at least 257 for BPE (256 bytes + "
                                                   f"end-of-text), got {self.vocab_size}"))
        for ok, msg in checks:
            if not ok:
                raise SettingError(msg)


# named sets of settings (train_cli.py --preset; the page's model sizes)
PRESETS = {
    # a few CPU minutes
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "batch_size": 32, "time_budget": 120},
    # a longer CPU run or a small GPU
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch_size": 32, "dropout": 0.1,
              "vocab_size": 4096, "time_budget": 1800},
    # GPT-2 small shape, for a GPU
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "batch_size": 16, "grad_accum": 4,
             "vocab_size": 32768, "lr": 6e-4, "warmup_steps": 500, "eval_interval": 500,
             "max_steps": 20000, "compile": True},
}


# settings that may change when a run is resumed; everything else must match the checkpoint
RESUMABLE_CHANGES = {"max_steps", "time_budget", "eval_interval", "eval_iters", "log_interval", "sample_tokens",
                     "device", "dtype", "compile", "out",
                     "corpus"}  # moved or renamed files: start_run checks that the text is the run's


class TrainingError(FieldNames, RuntimeError):
    """A run that had to stop; one line for the user (settings marked as in SettingError). Saved checkpoints are
    left as they were."""


# -----------------------------------------------------------------------------
# the run's state, and what a session works with

@dataclass
class RunState:
    """The run's mutable state. last/train_state.pt holds it, with the optimizer and RNG states beside it, so
    that a resumed run continues exactly."""

    step: int = 0
    tokens_seen: int = 0
    train_time: float = 0.0  # seconds spent in training steps (evaluation not counted)
    best_val_loss: float = math.inf
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient, in all


@dataclass
class Run:
    """What one training session works with, made by start_run: the settings, data, model and optimizers of the
    run, where this session started, and the state that advances."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    state: RunState
    tokenizer: Tokenizer | CharTokenizer
    splits: dict[str, np.ndarray]
    tokens_per_byte: float  # validation tokens per corpus byte, for bits per byte
    model: GPT
    fwd: torch.nn.Module  # the model as the loop calls it: compiled, or the model itself
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    batch_gen: torch.Generator
    device: torch.device
    autocast: contextlib.AbstractContextManager
    log: Callable[[str], None]
    prior_wall: float = 0.0  # wall-clock seconds of the sessions before this one
    dist: Dist = dataclasses.field(default_factory=Dist)  # this process's place among torchrun's (world 1: alone)
    ddp: torch.nn.parallel.DistributedDataParallel | None = None  # the model as the ranks share its gradients
    ema: list[torch.Tensor] | None = None  # the averaged weights, one per model.parameters(), with cfg.ema
    epochs: Epochs | None = None  # the order of the training windows, with cfg.shuffle (made at the first batch)
    raw: list[torch.Tensor] | None = None  # the model's own weights while it holds the averaged ones (averaged())
    last_losses: dict | None = None  # the previous evaluation's, for the overfitting warning
    warned_overfit: bool = False
    t_start: float = dataclasses.field(default_factory=time.time)
    start: RunState = dataclasses.field(init=False)  # where this session began

    def __post_init__(self):
        self.start = dataclasses.replace(self.state)
        if self.cfg.ema and self.ema is None:
            self.ema = [p.detach().clone() for p in self.model.parameters()]

    def batch(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of micro-batch `micro` of this step. Read in epochs, the ranks and micro-batches take
        the run's windows in turn (micro-batch m of all ranks together is (step x accumulation + m) x world +
        rank), so the batches follow from the step alone; otherwise from this rank's batch generator."""
        cfg, block = self.cfg, self.model_cfg.block_size
        if not cfg.shuffle:
            return get_batch(self.splits["train"], block, cfg.batch_size, self.batch_gen, self.device)
        if self.epochs is None:
            self.epochs = Epochs(len(self.splits["train"]), block, cfg.seed)
        k = (self.state.step * cfg.grad_accum + micro) * self.dist.world + self.dist.rank
        return windows(self.splits["train"], self.epochs.take(k * cfg.batch_size, cfg.batch_size), block, self.device)

    def update_ema(self) -> None:
        """Move the average towards the weights after a step. The decay ramps up as (1 + step) / (10 + step), so
        the first steps' weights, far from trained, fade out quickly."""
        if self.ema is not None:
            decay = min(self.cfg.ema, (1 + self.state.step) / (10 + self.state.step))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    @contextlib.contextmanager
    def averaged(self):
        """Inside, the model holds the averaged weights (to evaluate, sample and save), and self.raw its own."""
        if self.ema is None or self.raw is not None:
            yield
            return
        params = [p.detach() for p in self.model.parameters()]
        self.raw = [p.clone() for p in params]
        torch._foreach_copy_(params, self.ema)
        try:
            yield
        finally:
            torch._foreach_copy_(params, self.raw)
            self.raw = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step reads on all ranks together: batch x accumulation x ranks x context."""
        return self.cfg.batch_size * self.cfg.grad_accum * self.dist.world * self.model_cfg.block_size

    @property
    def time_budget(self) -> float:
        """Seconds of training to stop at; neither a budget nor a step count given: about 5 minutes."""
        return self.cfg.time_budget if self.cfg.time_budget or self.cfg.max_steps else 300.0

    def done(self) -> bool:
        s, c = self.state, self.cfg
        return bool(c.max_steps and s.step >= c.max_steps or self.time_budget and s.train_time >= self.time_budget)

    def progress(self) -> float:
        """How far the cosine is: by steps it starts after the warmup (as nanoGPT's); under a time budget it
        spans the whole budget (the warmup is a few seconds of it). With both, whichever is further."""
        s, c = self.state, self.cfg
        by_steps = (s.step - c.warmup_steps) / max(c.max_steps - c.warmup_steps, 1) if c.max_steps else 0.0
        return max(by_steps, s.train_time / self.time_budget if self.time_budget else 0.0)


# -----------------------------------------------------------------------------
# starting or resuming

def build_tokenizer(corpus: Corpus, cfg: TrainConfig, verbose: bool = True,
                    log: Callable[[str], None] = tqdm.write):
    """Train the run's tokenizer; its warnings (a corpus too small for the vocabulary) go to the log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if cfg.tokenizer == "char":
                tok = CharTokenizer.train(corpus.pieces())
            else:
                tok = Tokenizer.train(corpus.pieces(), cfg.vocab_size, verbose=verbose)
        except DataError:  # the corpus itself (read as the tokenizer learns it): said as it is
            raise
        except ValueError as e:
            raise TrainingError(f"tokenizer: {e}") from None
    for w in caught:
        log(f"tokenizer: {w.message}")
    return tok


def check_resume(saved_model: ModelConfig, saved_train: TrainConfig, model_overrides: dict,
                 train_overrides: dict) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """Apply the settings a user gave to a resumed run; refuse those that conflict, listing them all. Returns
    the configs and a line per setting that changed."""
    diffs = [f"`{k}`: checkpoint has {getattr(saved_model, k)!r}, you gave {v!r}"
             for k, v in model_overrides.items() if k != "vocab_size" and getattr(saved_model, k) != v]
    diffs += [f"`{k}`: checkpoint has {getattr(saved_train, k)!r}, you gave {v!r}"
              for k, v in train_overrides.items() if k not in RESUMABLE_CHANGES and getattr(saved_train, k) != v]
    if diffs:
        raise TrainingError("`resume`: these settings conflict with the checkpoint: " + "; ".join(diffs))
    changes = {k: v for k, v in train_overrides.items() if k in RESUMABLE_CHANGES and getattr(saved_train, k) != v}
    said = [f"`{k}` {v!r} (was {getattr(saved_train, k)!r})" for k, v in changes.items() if k != "out"]
    return saved_model, from_dict(TrainConfig, {**to_dict(saved_train), **changes}), said  # checked as a new run's


def _read_last(out: Path, model_overrides: dict, train_overrides: dict):
    """OUT/last of a run to resume -> (its directory, model config, train config, saved train state, tokenizer,
    a line per setting the user changed)."""
    try:
        last = resolve(out / "last")
        saved_model, saved_train = read_config(last)
        state = load_train_state(last)
        _check_saved_state(state, last)
        if "corpus" in state:  # where the corpus was, relative to the run (config.json has its names only)
            saved_train = {**saved_train, "corpus": corpus_at(out, state["corpus"])}
        missing = [c for c in saved_train.get("corpus", ()) if is_local(c) and not _found(c)]
        if missing and "corpus" not in train_overrides:
            raise TrainingError(f"`resume`: the corpus this run was trained on is not at {', '.join(missing)} (moved, "
                                f"or the run was): give it again with `corpus`")
        model_cfg, cfg, changed = check_resume(saved_model, from_dict(TrainConfig, saved_train), model_overrides,
                                               train_overrides)
        cfg = dataclasses.replace(cfg, out=str(out))
        return last, model_cfg, cfg, state, load_tokenizer(last / TOKENIZER), changed
    except CheckpointError as e:
        raise TrainingError(f"`resume`: {e}") from None


def _found(spec: str) -> bool:
    try:
        return bool(resolve_corpus(spec))
    except ValueError:
        return False


def _check_saved_state(state: dict, last: Path) -> None:
    """train_state.pt has what resuming reads: RunState's numbers, the optimizers' and the random states."""
    wrong = [f.name for f in dataclasses.fields(RunState)
             if not isinstance(state.get(f.name), (int, float)) or isinstance(state.get(f.name), bool)]
    wrong += [k for k, kind in (("optimizers", list), ("rng", dict)) if not isinstance(state.get(k), kind)]
    corpus = state.get("corpus", [])
    if not isinstance(corpus, list) or not all(isinstance(c, str) for c in corpus):
        wrong.append("corpus")
    if wrong:
        raise CheckpointError(f"{last / STATE}: missing or malformed: {', '.join(wrong)}")


def _check_same_text(out: Path, key: str, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """On resume: the corpus must be the text the run was trained on (data.json keeps its key)."""
    info = read_data_info(out)
    if not info:
        log(f"no {DATA_INFO} in {out}: the corpus is tokenized again, and cannot be checked to be the text this run "
            "started on")
    elif info.get("key") != key:
        raise TrainingError(f"`resume`: the corpus ({', '.join(cfg.corpus)}) is not the text this run was trained "
                            f"on (it changed since, or another file has its name): resuming would train on other "
                            f"tokens. Restore it, or start a new run with another `out`")


def start_run(model_cfg: ModelConfig | None, cfg: TrainConfig, resume: bool = False,
              model_overrides: dict | None = None, train_overrides: dict | None = None, overwrite: bool = False,
              progress: bool = True, log: Callable[[str], None] = tqdm.write, dist: Dist | None = None) -> Run:
    """Everything a training session needs: a new run in cfg.out, or the one saved in cfg.out/last (resume).
    Under torchrun (`dist`), rank 0 trains the tokenizer and writes the data files; each rank draws its own batches."""
    out, saved, tokenizer, dist = Path(cfg.out), None, None, dist or Dist()
    if resume:
        last, model_cfg, cfg, saved, tokenizer, changed = _read_last(out, model_overrides or {},
                                                                     train_overrides or {})
        if changed:
            log("resuming with " + "; ".join(changed).replace("`", ""))
    elif not overwrite and has_checkpoints(out):
        raise TrainingError(f"{out} already holds checkpoints: use `resume` to continue that run, "
                            f"`overwrite` to replace it, or `out` for a new directory")
    device = pick_device(cfg.device)
    if dist.active and device.type == "cuda":  # one GPU per process of this machine
        device = torch.device("cuda", dist.local_rank)
    ptdtype = pick_dtype(cfg.dtype, device)
    autocast = torch.autocast(device.type, dtype=ptdtype) if ptdtype != torch.float32 else contextlib.nullcontext()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model_cfg, tokenizer, splits, info = _data(model_cfg, cfg, tokenizer, resume, progress, log, dist)

    if saved is None and model_cfg.vocab_multiple is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_multiple=vocab_multiple(device))
    if saved is not None:
        check_sizes(last / WEIGHTS, model_cfg)  # before building: a broken config.json could ask for any size
    model = GPT(model_cfg).to(device)  # the same weights on every rank: each seeded alike
    optimizers = configure_optimizers(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                      cfg.muon_lr, device.type)
    if dist.rank:  # dropout: each rank its own masks (rank 0's are one process's)
        torch.manual_seed(cfg.seed + dist.rank)
    batch_gen = torch.Generator().manual_seed(cfg.seed + dist.rank)  # each rank its own batches
    state, prior_wall, ema = RunState(), 0.0, None
    if saved is not None:
        state, prior_wall, ema = _restore(last, saved, model, optimizers, batch_gen, cfg, device, dist)
    if dist.main:
        if saved is not None:
            truncate_metrics(out, state.step)
        else:  # a new run starts a new log (an old one may be left from a run that saved nothing)
            (out / METRICS).unlink(missing_ok=True)
    # under torchrun, DDP averages the gradients; buffers are constants, so not synced at each forward
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False) if dist.active else None
    fwd = ddp or model
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    run = Run(cfg, model_cfg, state, tokenizer, splits, info["val_tokens"] / info["val_bytes"], model,
              torch.compile(fwd) if use_compile else fwd, optimizers,
              torch.amp.GradScaler(device.type, enabled=ptdtype == torch.float16), batch_gen, device, autocast,
              log if dist.main else _quiet, prior_wall, dist=dist, ddp=ddp, ema=ema)
    if dist.active:
        run.log(f"data parallel: {dist.world} processes ({dist.backend}), each {cfg.batch_size} x {cfg.grad_accum} "
                f"sequences of {model_cfg.block_size} tokens a step: {run.tokens_per_step:,} tokens a step in all")
    return run


def _quiet(line: str) -> None:
    """The log of a rank other than 0: rank 0 speaks for the run."""


def _data(model_cfg: ModelConfig, cfg: TrainConfig, tokenizer, resume: bool, progress: bool,
          log: Callable[[str], None], dist: Dist):
    """The run's tokenizer (trained now unless resumed) and its train / val token files -> (model config with the
    vocabulary size, tokenizer, splits, data info). Under torchrun rank 0 trains the tokenizer, the first process of
    each machine writes the token files, and the others wait."""
    out = Path(cfg.out)
    corpus = open_corpus(list(cfg.corpus), cfg.encoding_errors)
    if tokenizer is None and dist.main:
        tokenizer = build_tokenizer(corpus, cfg, verbose=progress, log=log)
    if dist.active and not resume:
        tokenizer = dist.share(tokenizer, patient=True)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    info = None
    if dist.local_rank == 0:  # the first process of each machine: `out` may be a disk of each machine's own
        key = data_key(corpus, tokenizer, cfg.val_frac)
        if resume and dist.main:
            _check_same_text(out, key, cfg, log)
        info = prepare(corpus, tokenizer, out, cfg.val_frac, min_tokens=model_cfg.block_size + 1, key=key,
                       progress=progress)
    dist.barrier(patient=True)  # every machine's files written before any rank reads its own
    info = dist.share(info, patient=True)
    return model_cfg, tokenizer, {"train": load_split(out / TRAIN_BIN), "val": load_split(out / VAL_BIN)}, info


def _restore(last: Path, saved: dict, model: GPT, optimizers: list, batch_gen: torch.Generator, cfg: TrainConfig,
             device: torch.device, dist: Dist) -> tuple[RunState, float, list[torch.Tensor] | None]:
    """Put a resumed run back as OUT/last saved it: weights, optimizers, random states (each rank its own) ->
    (its state, the wall seconds of the sessions before, the averaged weights when it keeps an `ema`)."""
    world = saved.get("world_size", 1)
    if world != dist.world:
        raise TrainingError(f"`resume`: this run was trained by {world} process(es) and this is {dist.world}: "
                            f"resume it with torchrun --nproc_per_node={world} (or without torchrun for 1), since "
                            "another number changes the batch and the order of the data")
    load_weights(model, last / WEIGHTS)  # copies into the tensors already on `device`
    try:
        for opt, sd in zip(optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(sd)
        set_rng_state(saved["rng_ranks"][dist.rank] if dist.active else saved["rng"], batch_gen)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TrainingError(f"`resume`: {last / STATE} does not fit this run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    ema = None
    if cfg.ema:  # last/ holds the average; the raw weights to go on from are in the train state
        ema = [p.detach().clone() for p in model.parameters()]
        raw = saved.get("raw_weights")
        if not (isinstance(raw, list) and len(raw) == len(ema)
                and all(isinstance(r, torch.Tensor) and r.shape == e.shape for r, e in zip(raw, ema))):
            raise TrainingError(f"`resume`: {last / STATE} lacks the raw weights an `ema` run resumes from")
        torch._foreach_copy_([p.detach() for p in model.parameters()], [r.to(device) for r in raw])
    state = RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState)})
    wall = read_meta(last).get("wall_time")
    return state, float(wall) if isinstance(wall, (int, float)) and math.isfinite(wall) else 0.0, ema
