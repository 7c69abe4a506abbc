"""The Train tab's settings and words, as plain data and page text (no gradio here; train_tab.py lays them out, training.py acts on them).

    SIZES, FIELDS                  the model sizes a beginner picks from, and each setting's label and one line
    configs(...) -> (model, train) the page's choices as the trainer's ModelConfig and TrainConfig (SettingError)
    check_text(data, what, ...)    a corpus from the page checked as the CLI checks one, in the page's words
    say(error)                     an error of llm/ with settings named by their labels, not their fields
    plan_markdown, run_label, progress_html, status_markdown
                                   what the run will be, and what it is doing
    StudioSettings.from_env()      where runs live and what a run may take on this server (environment variables)
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llm.auto import ngram_table
from llm.card import fmt_bytes, fmt_duration
from llm.config import FIELD, FieldNames, SettingError, from_dict
from llm.corpus import DataError, decode_text
from llm.model import ModelConfig
from llm.run import PRESETS, TrainConfig
from llm.worker import Plan, RunStatus

_NO_LIMITS = ("time_budget", "max_steps")  # the page sets these itself
# name -> (settings, one line). tiny is train_cli.py's defaults; the others are its presets' shapes
SIZES = {
    "tiny": ({}, "3 layers × 96 dims: learns in a few CPU minutes (train_cli.py's default)"),
    "small": ({k: v for k, v in PRESETS["tiny"].items() if k not in _NO_LIMITS},
              "4 layers × 128 dims, context 128: better text, needs about 10 CPU minutes or a GPU"),
    "medium": ({k: v for k, v in PRESETS["small"].items() if k not in _NO_LIMITS},
               "6 layers × 384 dims, context 256 (GPU)"),
    "large": ({k: v for k, v in PRESETS["gpt2"].items() if k not in _NO_LIMITS},
              "GPT-2 small's shape, 12 layers × 768 dims (GPU)"),
}
GPU_SIZES = ("medium", "large")
# the settings the page shows: field -> (label, one line of what it does)
FIELDS = {
    "size": ("Model size", "how big the GPT is; a bigger one learns more slowly per second but goes further"),
    "tokenizer": ("Tokenizer", "BPE merges frequent byte pairs into tokens; characters keeps one token per character"),
    "vocab_size": ("Vocabulary size", "BPE only: how many tokens it learns (more = shorter sequences, more to learn)"),
    "time_budget": ("Time budget (s)", "seconds of training; the learning rate schedule spans them"),
    "n_layer": ("Layers", "transformer blocks stacked"),
    "n_head": ("Heads", "attention heads per layer; must divide the width"),
    "n_embd": ("Width", "the size of each token's vector"),
    "block_size": ("Context length", "how many tokens the model sees at once"),
    "batch_size": ("Batch size", "sequences per training step"),
    "lr": ("Learning rate", "AdamW's step size (embeddings and head); Muon's for the blocks scales with it"),
    "max_steps": ("Step limit", ("0 = none: the time budget ends the run; a step count replaces the budget (and "
                                 "a stopped run resumed ends exactly as if never stopped)")),
    "eval_interval": ("Evaluate every", "steps between evaluations: each one saves, plots and writes a sample"),
    "dropout": ("Dropout", "randomly drops activations while training: helps a small text that is seen many times"),
    "seed": ("Seed", "the same seed and settings give the same run"),
    "val_frac": ("Validation share", "the end of the text held out to measure the model on text it never trained on"),
    "encoding_errors": ("Invalid UTF-8", "'replace' swaps bad bytes for � instead of refusing the text"),
}
# the largest a page may ask for: a model of these bounds is planned in moments; a bigger one is no page's run
MOST = {"n_layer": 64, "n_head": 64, "n_embd": 4096, "block_size": 8192, "batch_size": 4096, "vocab_size": 65536,
        "max_steps": 10_000_000, "eval_interval": 10_000_000}
BARE_FIELD = re.compile(r"\b(" + "|".join(k for k in FIELDS if "_" in k) + r")\b")
ADVANCED = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "lr", "max_steps", "eval_interval",
            "dropout", "seed", "val_frac", "encoding_errors"]


def label(name: str) -> str:
    """A setting as the page names it: “Context length” for block_size."""
    return f"“{FIELDS[name][0]}”" if name in FIELDS else name.replace("_", " ")


def say(error: BaseException) -> str:
    """An error's one line with the settings it names as the page labels them: marked ones (`block_size`), and
    the bare field names of the model's own checks ("n_embd (33) must be divisible by n_head (2)")."""
    if isinstance(error, FieldNames):
        return error.render(label)
    return BARE_FIELD.sub(lambda m: label(m.group(0)), str(error))


def words(message: str) -> str:
    """A message kept with its settings marked (a worker's status.json), as the page says it."""
    return FIELD.sub(lambda m: label(m.group(1)), message)


def size_settings(size: str) -> dict:
    """The advanced settings a size fills in."""
    if size not in SIZES:
        raise SettingError(f"`size` must be one of {', '.join(SIZES)}, got {size!r}")
    model, train = ModelConfig(), TrainConfig()
    base = {k: getattr(model if hasattr(model, k) else train, k) for k in [*ADVANCED, "vocab_size"]}
    return {**base, **{k: v for k, v in SIZES[size][0].items() if k in base}}


def configs(size: str, tokenizer: str, vocab_size: int, time_budget: float, advanced: dict,
            corpus: tuple[str, ...] = (), out: str = "") -> tuple[ModelConfig, TrainConfig]:
    """The page's settings -> the trainer's configs, checked as the CLI checks them (SettingError naming fields).
    The size's other settings (vocabulary, learning rate) come with it; `advanced` overrides them. Characters get
    the n-gram embeddings train_cli.py's rule gives them."""
    flat = {**size_settings(size), **SIZES[size][0], "ngram_embed": ngram_table(tokenizer), **advanced,
            "tokenizer": tokenizer, "vocab_size": vocab_size, "time_budget": time_budget}
    if flat.get("max_steps"):  # a step count replaces the budget: the schedule then follows steps, not the clock
        flat["time_budget"] = 0.0
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps", "eval_interval", "seed",
              "vocab_size"):
        flat[k] = _whole(k, flat[k])
        if k in MOST and flat[k] > MOST[k]:
            raise SettingError(f"`{k}` can be at most {MOST[k]:,} here, got {flat[k]:,}")
    for k in ("lr", "dropout", "val_frac", "time_budget"):
        flat[k] = _number(k, flat[k])
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    model = from_dict(ModelConfig, {k: v for k, v in flat.items() if k in model_keys})
    train = {k: v for k, v in flat.items() if k in train_keys}  # the cosine ends at a tenth of `lr` (min_lr's default)
    # no torch.compile: a page's run lasts minutes, and a compile's cold start (tens of seconds) is counted in them
    cfg = from_dict(TrainConfig, {**train, "corpus": tuple(corpus), "out": out, "compile": False})
    return dataclasses.replace(model, vocab_size=vocab_size if tokenizer == "bpe" else 256), cfg


def _whole(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
        raise SettingError(f"`{name}` must be a whole number, got {v!r}")
    return int(v)


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SettingError(f"`{name}` must be a number, got {v!r}")
    return float(v)


def check_text(data: bytes, what: str, max_bytes: int, block_size: int, val_frac: float,
               errors: str = "strict", tokenizer: str = "bpe") -> str:
    """A corpus given in the page (uploaded or pasted) -> its text; DataError in the page's words when it is too
    large, not UTF-8 (with the byte offset), binary, empty, or too short for the context. The last is the CLI's
    rule (each split holds at least block_size + 1 tokens): exact for characters (a token each); for BPE on the
    most tokens a text can make, one per byte, so a text that passes can still come out short after BPE's merges,
    and the run then says so."""
    if len(data) > max_bytes:
        raise DataError(f"{what} is {fmt_bytes(len(data))}; the limit here is {fmt_bytes(max_bytes)}")
    text = decode_text(data, what, errors)
    tokens, unit = (len(text), "characters") if tokenizer == "char" else (len(data), "bytes")
    need = math.ceil((block_size + 1) / min(val_frac, 1 - val_frac))
    if tokens < need:
        raise DataError(f"{what} is too short for a context of {block_size} tokens: its validation part needs at "
                        f"least {block_size + 1} tokens, so the text needs at least {need:,} {unit} (it has "
                        f"{tokens:,}). Use a longer text or a shorter `block_size`")
    return text


# -----------------------------------------------------------------------------
# what the page says about a run

def plan_markdown(plan: Plan, cfg: TrainConfig, device: str) -> str:
    parts = [f"**{plan.params:,} parameters**", f"{plan.tokens_per_step:,} tokens per step"]
    if plan.seconds_per_step:
        parts.append(f"about {plan.seconds_per_step * 1000:,.0f} ms per step on {device}")
    if cfg.max_steps:
        parts.append(f"{cfg.max_steps:,} steps" + (f" (about {fmt_duration(cfg.max_steps * plan.seconds_per_step)})"
                                                    if plan.seconds_per_step else ""))
    elif plan.steps:
        parts.append(f"about {plan.steps:,} steps in {cfg.time_budget:g} s")
    return "This run: " + " · ".join(parts)


STATE_WORDS = {"queued": "waiting in line", "starting": "starting", "running": "training", "finished": "finished", "stopped": "stopped",
               "failed": "failed", "killed": "stopped unexpectedly", "empty": "no checkpoints", "gone": "deleted"}


def run_label(s: RunStatus) -> str:
    """A run in a list: name, state, and its best bits per byte."""
    bpb = f" · {s.best_bits_per_byte:.3f} bits/byte" if isinstance(s.best_bits_per_byte, (int, float)) else ""
    return f"{s.name} · {STATE_WORDS.get(s.state, s.state)}{bpb}"


def progress_html(s: RunStatus) -> str:
    """A progress bar with the step, tokens per second and the training time left."""
    pct = 100 * s.progress()
    facts = [f"step {s.step:,}" + (f" of {s.max_steps:,}" if s.max_steps else "")]
    if s.tokens_per_sec:
        facts.append(f"{s.tokens_per_sec:,.0f} tokens/s")
    left = s.seconds_left()
    if s.live and left is not None:
        facts.append(f"{fmt_duration(left)} left")
    elif s.train_time:
        facts.append(f"{fmt_duration(s.train_time)} of training")
    label = html.escape(" · ".join(facts))
    # inline styles with the theme's variables: right in light and dark mode, no stylesheet to launch with
    return (f'<div class="run-progress" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100" style="height:10px;border-radius:5px;overflow:hidden;'
            f'background:var(--border-color-primary)"><div style="height:100%;width:{pct:.1f}%;'
            f'background:var(--color-accent)"></div></div><div class="run-progress-text" '
            f'style="margin-top:4px">{label}</div>')


def status_markdown(s: RunStatus, place: int | None = None) -> str:
    """The run's state in a sentence, with its latest bits per byte and what it says of itself; a run waiting in
    line, its place there."""
    line = f"**{s.name}**: {STATE_WORDS.get(s.state, s.state)}"
    if place is not None:
        line += (f", place {place} ({place - 1} ahead of it)" if place > 1
                 else ", next: it starts as soon as a run training now ends")
    if s.stopping:
        line += " (stopping: " + ("evaluating and saving)" if s.from_page else "saving)")
    elif s.state == "starting" and not s.step:
        line += " (training the tokenizer and preparing the data)"
    if isinstance(s.bits_per_byte, (int, float)):
        line += f" · latest {s.bits_per_byte:.3f} bits per byte"
    if isinstance(s.best_bits_per_byte, (int, float)):
        line += f" · best {s.best_bits_per_byte:.3f}"
    if s.message:
        line += f"  \n{html.escape(words(s.message))}"
    return line


# -----------------------------------------------------------------------------
# what the studio may do on this server

@dataclass
class StudioSettings:
    """What the Train tab may do here. From the environment: SCRATCHGPT_RUNS (the runs directory),
    SCRATCHGPT_MAX_CORPUS_MB, SCRATCHGPT_MAX_TIME_BUDGET (seconds), SCRATCHGPT_TRAIN_THREADS (torch threads of a
    training worker; the web server keeps the rest), SCRATCHGPT_MAX_RUNS (runs training at once),
    SCRATCHGPT_MAX_MODELS (models held in memory besides the first), and for a public studio (README, "A public
    Space") SCRATCHGPT_PUBLIC (on by itself on a Hugging Face Space, which sets SPACE_ID), SCRATCHGPT_KEEP_RUNS,
    SCRATCHGPT_MAX_RUNS_GB, SCRATCHGPT_MAX_WAITING and, on ZeroGPU, SCRATCHGPT_SLICE_SECONDS."""

    runs_dir: Path = Path("checkpoints")
    max_corpus_bytes: int = 20_000_000
    max_time_budget: float = 3600.0
    train_threads: int = max((os.cpu_count() or 2) // 2, 1)
    max_live_runs: int = 1
    max_models: int = 3
    public: bool = False  # visitors see their own runs only; a run started while others train waits in line
    keep_runs: int | None = None  # runs kept; the oldest finished visitor runs are removed first
    max_runs_bytes: int | None = None  # disk the runs may use
    max_waiting: int = 20  # runs waiting in line at most (public)
    slice_seconds: float = 60.0  # on ZeroGPU: the longest GPU call, a run's slice of training

    @classmethod
    def from_env(cls, runs_dir: str | Path | None = None, train_threads: int | None = None) -> StudioSettings:
        env, d = os.environ, cls()
        flag = env.get("SCRATCHGPT_PUBLIC", "").strip().lower()
        public = flag in ("1", "true", "yes", "on") or bool(env.get("SPACE_ID")) and flag not in ("0", "false", "no",
                                                                                                   "off")
        try:
            gb = env.get("SCRATCHGPT_MAX_RUNS_GB", "10" if public else "")
            keep = env.get("SCRATCHGPT_KEEP_RUNS", "50" if public else "")
            return cls(runs_dir=Path(runs_dir or env.get("SCRATCHGPT_RUNS") or d.runs_dir),
                       max_corpus_bytes=int(float(env.get("SCRATCHGPT_MAX_CORPUS_MB", d.max_corpus_bytes / 1e6)) * 1e6),
                       max_time_budget=float(env.get("SCRATCHGPT_MAX_TIME_BUDGET", d.max_time_budget)),
                       train_threads=int(train_threads or env.get("SCRATCHGPT_TRAIN_THREADS", d.train_threads)),
                       max_live_runs=int(env.get("SCRATCHGPT_MAX_RUNS", d.max_live_runs)),
                       max_models=int(env.get("SCRATCHGPT_MAX_MODELS", d.max_models)), public=public,
                       keep_runs=int(keep) if keep else None, max_runs_bytes=int(float(gb) * 1e9) if gb else None,
                       max_waiting=int(env.get("SCRATCHGPT_MAX_WAITING", d.max_waiting)),
                       slice_seconds=float(env.get("SCRATCHGPT_SLICE_SECONDS", d.slice_seconds)))
        except ValueError as e:
            raise ValueError(f"a SCRATCHGPT_ setting is not a number: {e}") from None

    @property
    def server_threads(self) -> int:
        return max((os.cpu_count() or 2) - self.train_threads, 1)
