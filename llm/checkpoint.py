"""The one module that reads and writes checkpoints, and that names every file of a run directory:

    OUT/best/  model.safetensors  config.json  tokenizer.json  meta.json
    OUT/last/  the same, plus train_state.pt (optimizer, step, RNG states; loads with weights_only=True)
    OUT/metrics.jsonl  one JSON row per log line: {"kind": "train" | "eval", "step": ..., ...}
    OUT/train.bin  OUT/val.bin  OUT/data.json   the tokenized corpus (llm/data.py) and its counts

Local directories only: a Hub repo id is resolved above this module (llm/hub.py; llm.load_checkpoint takes both).

Writes are atomic at the directory level: everything goes into a hidden temp directory, each file is fsynced, then
the old directory is renamed aside and the new one renamed into place. A crash between those two renames leaves the
previous checkpoint under `.NAME.old`, which `resolve` still finds, so there is always a loadable checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import platform
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from llm.config import from_dict, to_dict
from llm.model import GPT, ModelConfig
from llm.tokenizer import load_tokenizer

FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, META, STATE = (
    "model.safetensors", "config.json", "tokenizer.json", "meta.json", "train_state.pt")
MODEL_FILES = (WEIGHTS, CONFIG, TOKENIZER, META)  # what loading needs; train_state.pt is for resuming only
METRICS, DATA_INFO, TRAIN_BIN, VAL_BIN = "metrics.jsonl", "data.json", "train.bin", "val.bin"
LOCK = ".lock"  # held by the run that writes the directory
MAX_BLOCK_SIZE = 1 << 20  # a context longer than this is no model this code trains: a config asking for it is broken
CHECKPOINT_KINDS = ("best", "last")
# what older checkpoints were trained with (value_embed was on for a day; vocab_multiple came later: no padding)
ABSENT = {"model": {"value_embed": False, "vocab_multiple": 1}, "train": {"ema": 0.0, "shuffle": False}}
__version__ = "0.1.0"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match what it claims to be. One line, no traceback."""


# -----------------------------------------------------------------------------
# writing

def save_checkpoint(path: str | Path, model: GPT, tokenizer, train_config: Any = None,
                    meta: dict | None = None, train_state: dict | None = None,
                    extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write a self-describing checkpoint directory at `path`, replacing any previous one atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
        weights = {k: v.detach().to("cpu").contiguous() for k, v in _untied_state_dict(model).items()}
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        train = to_dict(train_config) if hasattr(train_config, "__dataclass_fields__") else (train_config or {})
        config = {"version": FORMAT_VERSION, "model": to_dict(model.config), "train": train}
        _dump_json(tmp / CONFIG, public_config(config))
        tokenizer.save(tmp / TOKENIZER)
        _dump_json(tmp / META, public_meta({"version": FORMAT_VERSION, **(meta or {}), "versions": _versions()}))
        if train_state is not None:
            torch.save(train_state, tmp / STATE)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes 0600; a checkpoint is meant to be shared
            _fsync(f)
        _fsync(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk, as torch and safetensors report it
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: could not save the checkpoint ({_first_line(e)}); the one saved before "
                              "is kept") from None
    except BaseException:  # includes a second Ctrl-C: leave no partial directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without the second name of a shared tensor (tied embeddings): safetensors stores each once."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def _dump_json(path: Path, obj: Any) -> None:
    """Written whole or not at all: a temporary file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # (machines sharing a disk)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    """_dump_json, a full disk as a CheckpointError naming the file."""
    try:
        _dump_json(path, obj)
    except OSError as e:
        raise CheckpointError(f"{path}: could not write ({_first_line(e)})") from None


def _fsync(path: Path) -> None:
    # directories are fsynced too, so the renames themselves are durable (not possible on Windows)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _versions() -> dict[str, str]:
    return {"scratchgpt": __version__, "torch": torch.__version__, "python": platform.python_version()}


def corpus_names(corpus: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """How a checkpoint records its corpus: URLs and built-in names as given, local files by their name only.
    A checkpoint is made to be shared: it never holds the trainer's paths (resuming keeps those in
    train_state.pt, which is never published)."""
    if isinstance(corpus, str):
        corpus = [corpus]
    return [c if c.startswith(("http://", "https://")) else PurePosixPath(c.replace("\\", "/")).name
            for c in map(str, corpus or ())]


def public_config(config: dict) -> dict:
    """config.json as it may be shared: the corpus by name, the output directory by its last part."""
    train = dict(config.get("train") or {})
    if "corpus" in train:
        train["corpus"] = corpus_names(train["corpus"])
    if train.get("out"):
        train["out"] = PurePosixPath(str(train["out"]).replace("\\", "/")).name
    return {**config, "train": train}


def public_meta(meta: dict) -> dict:
    """meta.json as it may be shared: the corpus by name."""
    return {**meta, "corpus": corpus_names(meta["corpus"])} if "corpus" in meta else meta


def has_checkpoints(out_dir: str | Path) -> bool:
    """True if a run directory holds a best/ or last/ checkpoint."""
    return any((Path(out_dir) / kind / CONFIG).exists() for kind in CHECKPOINT_KINDS)


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold OUT/.lock while a run writes OUT: a second run is refused, naming the process that holds it. The
    operating system releases the lock when its process ends however it ends, so the lock of a killed run is
    simply taken. Readers (the app, llm.generate) never need it. Directories made for the lock and left empty
    (a run refused before writing anything) are removed again."""
    out = Path(out_dir)
    made = [d for d in (out, *out.parents) if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    fd = _take_lock(out / LOCK)
    try:
        yield
    finally:
        (out / LOCK).unlink(missing_ok=True)  # while held: a run waiting on this file retries on the new one
        os.close(fd)
        for d in made:
            try:
                d.rmdir()
            except OSError:
                break


def _take_lock(path: Path) -> int:
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): runs are not kept apart
        return os.open(os.devnull, os.O_RDONLY)
    deadline = time.monotonic() + 1.0  # a reader's moment of holding it (is_running) is no refusal
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() < deadline:
                os.close(fd)
                time.sleep(0.05)
                continue
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(f"{path.parent} is in use by {holder}: wait for that run to end, or use another "
                                  f"`out`") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder ended and removed this file while we waited: lock the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}"
                     .encode())
            return fd
        os.close(fd)


def is_running(out_dir: str | Path, lock: str = LOCK) -> bool:
    """Whether a run holds OUT/.lock (or another lock file) now; a killed process's lock is free."""
    try:
        import fcntl  # no POSIX locks (Windows): no run is seen as running
        fd = os.open(Path(out_dir) / lock, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released with the file, below
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def lock_pid(out_dir: str | Path) -> int | None:
    """The process id run_lock wrote into OUT/.lock, if the file names one."""
    try:
        text = (Path(out_dir) / LOCK).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    words = text.split()
    return int(words[1]) if len(words) > 1 and words[0] == "process" and words[1].isdecimal() else None


# -----------------------------------------------------------------------------
# the run's other files: metrics.jsonl and data.json

def append_metrics(out_dir: str | Path, row: dict) -> None:
    """One JSON object per line in OUT/metrics.jsonl (the app plots it)."""
    path = Path(out_dir) / METRICS
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(f"{path}: could not write ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """An exception's own words, one line (torch's and safetensors' run over several)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def metrics_dir(ckpt: str | Path) -> Path | None:
    """Where a checkpoint's metrics.jsonl is: OUT for OUT/best or OUT/last, the directory itself for a model repo
    snapshot or a Space (whose files sit beside the weights); None if there is none."""
    ckpt = Path(ckpt)
    return next((d for d in (ckpt, ckpt.parent) if (d / METRICS).is_file()), None)


def read_metrics(out_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    path = Path(out_dir) / METRICS
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):  # what else a line holds is no row of ours
                rows.append(row)
    return rows


def truncate_metrics(out_dir: str | Path, step: int) -> None:
    """Drop rows logged after `step` (on resume: a crash between an eval and the next save)."""
    path = Path(out_dir) / METRICS
    if path.exists():
        keep = [json.dumps(r) for r in read_metrics(out_dir)
                if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
        path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def metric_rows(rows: list[dict], kind: str) -> list[dict]:
    """The rows of one kind: "train" (the per-step log) or "eval" (evaluations; a row with no kind, from older
    runs, is one)."""
    return [r for r in rows if r.get("kind", "eval") == kind]


def metric_points(rows: list[dict], kind: str, key: str) -> list[tuple[int | float, float]]:
    """(step, value) of `key` in the rows of one kind, sorted by step; missing and non-finite values left out."""
    out = []
    for r in metric_rows(rows, kind):
        v, s = r.get(key), r.get("step")
        if isinstance(v, (int, float)) and isinstance(s, (int, float)) and math.isfinite(v):
            out.append((s, float(v)))
    return sorted(out)


def read_data_info(out_dir: str | Path) -> dict:
    """OUT/data.json (token and byte counts of the tokenized corpus); {} when there is none or it is unreadable."""
    try:
        info = json.loads((Path(out_dir) / DATA_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def write_data_info(out_dir: str | Path, info: dict) -> None:
    _write_json(Path(out_dir) / DATA_INFO, info)


# -----------------------------------------------------------------------------
# reading

def resolve(path: str | Path) -> Path:
    """OUT/best, OUT/last or OUT (meaning best, else last) -> the checkpoint directory."""
    path = Path(path)
    for cand in (path, path / "best", path / "last"):
        for d in (cand, cand.parent / f".{cand.name}.old"):  # .old: a crash between the two renames
            if (d / CONFIG).is_file():
                return d
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the directory does not exist")
    raise CheckpointError(f"no checkpoint at {path}: expected {CONFIG} there or in best/ or last/")


def read_config_dict(path: str | Path) -> dict:
    """config.json as stored: {"version", "model": ModelConfig fields, "train": TrainConfig fields}."""
    return _config_dict(resolve(path))


def read_config(path: str | Path) -> tuple[ModelConfig, dict]:
    """The model config and the training config dict stored in a checkpoint."""
    return _config(resolve(path))


def read_meta(path: str | Path) -> dict:
    return _meta(resolve(path))


def _config_dict(d: Path) -> dict:
    cfg = _read_json(d / CONFIG)
    if cfg.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{d / CONFIG}: format version {cfg.get('version')!r}, this code reads {FORMAT_VERSION}")
    return cfg


def _config(d: Path) -> tuple[ModelConfig, dict]:
    cfg = _config_dict(d)  # a key that a checkpoint from before it existed lacks: ABSENT's value, not the default
    model, train = ({**ABSENT[k], **cfg[k]} if cfg.get(k) and isinstance(cfg[k], dict) else cfg.get(k) or {}
                    for k in ("model", "train"))
    try:
        return from_dict(ModelConfig, model), train
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / CONFIG}: {e}") from None


def _meta(d: Path) -> dict:
    return _read_json(d / META) if (d / META).exists() else {}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Load a checkpoint for use: returns (model in eval mode on `device`, tokenizer, meta dict).

    `path` is OUT/best, OUT/last, or OUT (which means best). Refuses, naming what differs, a checkpoint whose
    tokenizer does not fit the model's vocabulary or whose tensors do not match the config. meta["path"] is the
    directory it was loaded from.
    """
    d = resolve(path)  # once: the readers below take the directory as found
    config, _ = _config(d)
    try:
        tokenizer = load_tokenizer(d / TOKENIZER)
    except FileNotFoundError:
        raise CheckpointError(f"{d}: {TOKENIZER} is missing") from None
    except (ValueError, OSError) as e:  # its messages name the file
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{d}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                              f"{config.vocab_size}")
    check_sizes(d / WEIGHTS, config)
    model = GPT(config)
    load_weights(model, d / WEIGHTS)
    meta = _meta(d)
    meta["path"] = str(d)
    return model.to(device).eval(), tokenizer, meta


def copy_model_files(path: str | Path, dest: str | Path) -> Path:
    """Copy what loading a checkpoint needs (MODEL_FILES, not train_state.pt) into `dest`, config.json and
    meta.json as they may be shared (public_config, public_meta: an older checkpoint may hold paths); returns the
    checkpoint directory they came from."""
    d, dest = resolve(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if not (d / name).is_file():
            raise CheckpointError(f"{d}: {name} is missing; not a complete checkpoint")
        shutil.copyfile(d / name, dest / name)
    _write_json(dest / CONFIG, public_config(_config_dict(d)))
    _write_json(dest / META, public_meta(_meta(d)))
    return d


def check_sizes(file: str | Path, config: ModelConfig) -> None:
    """The config's sizes against the weights file's header, before a model is built: a config.json that does
    not describe the weights, or asks for absurd sizes, is refused without allocating anything."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file.parent}: {file.name} is missing")
    try:
        with safe_open(str(file), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({_first_line(e)})") from None
    c, needed = config, ["wte.weight"] + ["ngram.weight"] * bool(config.ngram_embed)
    tables = {"wte.weight": (c.padded_vocab, c.n_embd), "wpe.weight": (c.block_size, c.n_embd),
              "ngram.weight": (c.ngram_embed + 1, c.n_embd)}  # the tables the config sizes, before they exist
    problems = [f"{k}: shape {shapes[k]} in the file, {v} in the config" for k, v in tables.items()
                if shapes.get(k, v) != v] + [f"missing tensor {k}" for k in needed if k not in shapes]
    blocks = {k.split(".")[1] for k in shapes if k.startswith("h.")}
    if len(blocks) != c.n_layer or not all(b.isdigit() and int(b) < c.n_layer for b in blocks):
        problems.append(f"{len(blocks)} blocks in the file, n_layer {c.n_layer} in the config")
    if c.block_size > MAX_BLOCK_SIZE:
        problems.append(f"block_size {c.block_size:,} is beyond any model this code builds ({MAX_BLOCK_SIZE:,})")
    if problems:
        raise CheckpointError(f"{file}: does not match its config.json: {'; '.join(problems)}")


def load_weights(model: GPT, file: str | Path) -> None:
    """Load model.safetensors into `model`, refusing missing, unexpected or mis-shaped tensors by name."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file.parent}: {file.name} is missing")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    expected = _untied_state_dict(model)
    problems = [f"missing tensor {k}" for k in expected if k not in state]
    problems += [f"unexpected tensor {k}" for k in state if k not in expected]
    problems += [f"{k}: shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the config"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{file}: does not match its config.json: {shown}")
    model.load_state_dict(state, strict=False)  # the tied names left out are the same tensor as loaded ones


def load_train_state(path: str | Path) -> dict:
    """last/train_state.pt, loaded with weights_only=True: tensors, numbers, strings and containers of them."""
    d = resolve(path)
    try:
        state = torch.load(d / STATE, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{d}: no {STATE}; only a last/ checkpoint can be resumed") from None
    except pickle.UnpicklingError:  # what weights_only refuses: never offer to unpickle it anyway
        raise CheckpointError(f"{d / STATE}: holds Python objects other than tensors and numbers; it is not "
                              "loaded (unpickling it could run any code)") from None
    except Exception as e:  # torch raises several types for a corrupt zip
        raise CheckpointError(f"{d / STATE}: unreadable ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{d / STATE}: expected a dict of the training state")
    return state


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj
