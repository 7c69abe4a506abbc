"""Training from the page: each run in its own worker process, watched through the files it writes.

    new_run(runs_dir, stem) -> OUT             a fresh run directory; its name ends in a random part
    write_job(OUT, model, train, ...)          the run's settings, as the worker reads them (OUT/job.json)
    launch(OUT, resume=False) -> Popen         `python -m llm.worker OUT` in a session of its own (it outlives the
                                               web server, and a crash or an out-of-memory in it takes only it down)
    stop(OUT)                                  ask a run to stop: it evaluates, saves last/ and best/, and ends
    run_status(OUT) -> RunStatus               what a run's files say: starting, running, finished, stopped, ...
    list_runs(runs_dir) -> [RunStatus]         every run there, CLI runs included, newest first
    plan(model, train, seconds_per_step)       parameters, tokens per step, steps a time budget buys here

The worker (main) trains through llm.train.train as train_cli.py does and records in OUT/status.json when it
starts and how it ended. While it trains it holds OUT/.lock, which the operating system frees however the
process ends: a run whose status still says it started, whose lock is free and whose process is gone was killed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm.checkpoint import (CONFIG, METRICS, CheckpointError, is_running, lock_pid, metric_rows, read_config_dict,
                            read_meta, read_metrics)
from llm.cli import ArgumentParser
from llm.config import FieldNames, from_dict, to_dict
from llm.corpus import corpus_at, corpus_from
from llm.model import GPT, ModelConfig
from llm.optim import configure_optimizers
from llm.run import TrainConfig, TrainingError
from llm.train import train

JOB, STATUS, LOG, UPLOAD, WORKER_LOCK = "job.json", "status.json", "worker.log", "corpus.txt", ".worker"
QUEUED = "queued.json"  # a run waiting in line for a free place to train (llm.public): when it joined
HALT = "halt"  # a run trained in slices in the server (ZeroGPU) is asked to stop by this file
ROOT = Path(__file__).resolve().parent.parent  # the worker runs `-m llm.worker` from here
_children: list[subprocess.Popen] = []  # workers this process started, reaped as they end


class Stopped(Exception):
    """A stop asked for before the training loop began (the loop itself stops gracefully)."""


# -----------------------------------------------------------------------------
# starting and stopping a run

def new_run(runs_dir: str | Path, stem: str) -> Path:
    """A fresh directory under runs_dir: `stem-YYYYmmdd-HHMMSS-<12 random hex digits>` (not guessable)."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_")[:40] or "run"
    out = Path(runs_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(6)}"
    out.mkdir(parents=True)
    return out


def write_job(out: Path, model_cfg: ModelConfig, cfg: TrainConfig, threads: int = 1, source: str = "",
              owner: str | None = None) -> None:
    """OUT/job.json: the run's settings (corpus paths relative to OUT), the worker's thread count, where the text
    came from in words, and in a public studio who started it (llm.public.owner_id)."""
    train_d = {**to_dict(cfg), "corpus": corpus_from(out, cfg.corpus), "out": ""}
    job = {"model": to_dict(model_cfg), "train": train_d, "threads": threads, "source": source,
           "created": time.time(), **({"owner": owner} if owner else {})}
    write_json(out / JOB, job)


def launch(out: Path, resume: bool = False) -> subprocess.Popen:
    """Start the worker for OUT; its output goes to OUT/worker.log. The worker inherits OUT/.worker locked (the
    lock goes with the open file, and the operating system frees it when the worker ends however it ends): a run
    is starting while that lock is held and no training holds OUT/.lock, whatever process ids say."""
    _reap()
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    threads = int(read_json(out / JOB).get("threads", 1))
    env = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    fd = _lock_worker(out)
    try:
        write_json(out / STATUS, {"state": "started", "time": time.time(), "resume": resume})
        (out / QUEUED).unlink(missing_ok=True)  # its turn came
        with open(out / LOG, "a", encoding="utf-8") as log:
            args = [sys.executable, "-m", "llm.worker", str(out.resolve())] + (["--resume"] if resume else [])
            p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(fd,) if fd else ())
    finally:
        if fd:
            os.close(fd)  # the worker's copy keeps the lock
    _children.append(p)
    return p


def _lock_worker(out: Path) -> int | None:
    """OUT/.worker opened and locked, for the worker to inherit; RuntimeError if a worker holds it."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): the process id alone says whether the worker lives
        return None
    fd = os.open(out / WORKER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 10.0  # a worker that said how it ended may still be exiting
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"{out.name} has a worker already") from None
            time.sleep(0.05)


def stop(out: Path) -> bool:
    """Ask OUT's worker (or a train_cli.py run) to stop: one SIGTERM, as one Ctrl-C (a second would stop it at
    once, unsaved), so a stop already asked for is not asked again. False when nothing runs there."""
    status = read_json(out / STATUS)
    if is_running(out):  # training: the lock's holder
        pid = lock_pid(out)
    elif _state(out, status) == "starting":  # before training: the worker's own process
        pid = status.get("pid") or next((c.pid for c in _children if str(out.resolve()) in c.args), None)
    else:
        return False
    if pid == os.getpid():  # a slice training in this very process (ZeroGPU): OUT/halt stops it, not a signal
        return False
    if pid and status.get("stop_requested") == pid:
        return True
    write_json(out / STATUS, {**status, "stop_requested": pid or True})  # a worker starting up reads it too
    try:
        if pid:
            os.kill(int(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def _reap() -> None:
    """Collect the exit status of workers that ended, so none lingers as a zombie."""
    _children[:] = [p for p in _children if p.poll() is None]


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -----------------------------------------------------------------------------
# what a run's files say

@dataclass
class RunStatus:
    """One run as the page shows it. state: queued | starting | running | finished | stopped | failed | killed |
    empty | gone (deleted)."""

    name: str
    state: str
    message: str = ""
    from_page: bool = False  # started in the page (job.json), not by train_cli.py
    owner: str | None = None  # the visitor who started it (llm.public.owner_id), in a public studio
    stopping: bool = False  # live, and asked to stop
    step: int = 0
    max_steps: int = 0
    time_budget: float = 0.0  # seconds; the trainer's 5 minutes when neither limit is set
    train_time: float = 0.0
    tokens_per_step: int = 0
    tokens_per_sec: float | None = None
    bits_per_byte: float | None = None  # the latest evaluation's
    best_bits_per_byte: float | None = None
    sample: str = ""  # the latest evaluation's
    has_best: bool = False
    has_last: bool = False
    updated: float = 0.0
    rows: list[dict] = field(default_factory=list, repr=False)  # metrics.jsonl

    @property
    def live(self) -> bool:
        return self.state in ("starting", "running")

    def progress(self) -> float:
        """How far the run is, 0-1: by steps or by the time budget, whichever is further."""
        by_steps = self.step / self.max_steps if self.max_steps else 0.0
        return min(1.0, max(by_steps, self.train_time / self.time_budget if self.time_budget else 0.0))

    def seconds_left(self) -> float | None:
        """Training seconds left (evaluation not counted), from the budget or the recent speed."""
        left = []
        if self.time_budget:
            left.append(max(self.time_budget - self.train_time, 0.0))
        if self.max_steps and self.tokens_per_sec and self.tokens_per_step:
            left.append(max(self.max_steps - self.step, 0) * self.tokens_per_step / self.tokens_per_sec)
        return min(left) if left else None


def run_status(out: Path, metrics: bool = True) -> RunStatus:
    """What OUT's files say; without `metrics`, metrics.jsonl is not read (a list's labels do without it)."""
    _reap()
    if not out.is_dir():
        return RunStatus(out.name, "gone", message="its directory was deleted")
    job, status = read_json(out / JOB), read_json(out / STATUS)
    s = RunStatus(out.name, _state(out, status), from_page=bool(job),
                  owner=job.get("owner") if isinstance(job.get("owner"), str) else None)
    s.message = str(status.get("message", "stopped before the first training step" if s.state == "stopped" else ""))
    s.stopping = s.live and bool(status.get("stop_requested"))
    s.has_best, s.has_last = (out / "best" / CONFIG).is_file(), (out / "last" / CONFIG).is_file()
    _settings_into(s, out, job)
    s.rows = read_metrics(out) if metrics and (out / METRICS).is_file() else []
    _metrics_into(s)
    if not metrics and s.has_last:  # where the run was at its last save, for its progress
        last = read_json(out / "last" / "meta.json")
        s.step, s.train_time = int(_num(last, "step")), float(_num(last, "train_time"))
    if s.state == "finished" and not status.get("state") and s.progress() < 1:
        s.state = "stopped"  # a train_cli.py run that ended before its limit: Ctrl-C, or killed
    if s.has_best:
        try:
            best = read_meta(out / "best")
            s.best_bits_per_byte = best.get("bits_per_byte")
        except (CheckpointError, OSError, ValueError):
            pass
    if s.state == "killed":
        s.message = ("the training process ended without saying why (killed, or out of memory)"
                     + ("; resume continues from the last save" if s.has_last else ""))
    s.updated = max((_mtime(p) for p in (out, out / METRICS, out / STATUS, out / JOB)), default=0.0)
    return s


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile
        return 0.0


def _state(out: Path, status: dict) -> str:
    if is_running(out):
        return "running"
    said = status.get("state")
    if (out / QUEUED).is_file() and said != "started":
        return "queued"
    if said == "started":
        # a worker holds its lock; a slice (trained in the server's process, ZeroGPU) has only its pid to show
        if is_running(out, WORKER_LOCK) or (_no_locks() or status.get("slice")) and _alive(status.get("pid")):
            return "starting"
        return "stopped" if status.get("stop_requested") else "killed"
    if said in ("finished", "stopped", "failed"):
        return said
    return "finished" if (out / "best" / CONFIG).is_file() else "empty"  # a CLI run, or one never started


def _no_locks() -> bool:
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return True
    return False


def _settings_into(s: RunStatus, out: Path, job: dict) -> None:
    """The step limit, time budget and tokens per step: from job.json, else the last checkpoint's config."""
    model, cfg = job.get("model"), job.get("train")
    if not cfg:
        for kind in ("last", "best"):
            try:
                d = read_config_dict(out / kind)
                model, cfg = d.get("model"), d.get("train")
                break
            except (CheckpointError, OSError, ValueError):
                continue
    if not isinstance(cfg, dict) or not isinstance(model, dict):
        return
    s.max_steps, s.time_budget = int(_num(cfg, "max_steps")), float(_num(cfg, "time_budget"))
    if not s.max_steps and not s.time_budget:
        s.time_budget = 300.0  # the trainer's default (Run.time_budget)
    s.tokens_per_step = int(_num(cfg, "batch_size") * max(_num(cfg, "grad_accum"), 1) * _num(model, "block_size"))


def _num(d: dict, key: str) -> int | float:
    """A number from a JSON dict anyone may have edited; 0 for anything else."""
    v = d.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _metrics_into(s: RunStatus) -> None:
    train_rows, evals = metric_rows(s.rows, "train"), metric_rows(s.rows, "eval")
    last = max(train_rows[-1:] + evals[-1:], key=lambda r: r.get("step", 0), default={})
    s.step = int(last.get("step", 0))
    s.train_time = float(last.get("train_time", evals[-1].get("train_time", 0.0) if evals else 0.0))
    recent = [r["dt"] for r in train_rows[-5:] if isinstance(r.get("dt"), (int, float)) and r["dt"] > 0]
    if recent and s.tokens_per_step:
        s.tokens_per_sec = s.tokens_per_step / (sum(recent) / len(recent))
    elif evals:
        s.tokens_per_sec = evals[-1].get("tokens_per_sec")
    if evals:
        s.bits_per_byte, s.sample = evals[-1].get("bits_per_byte"), str(evals[-1].get("sample", ""))


def list_runs(runs_dir: str | Path, metrics: bool = False) -> list[RunStatus]:
    """Every run directory directly under runs_dir (page runs and train_cli.py runs), the newest first; with
    `metrics`, each with its metrics read (steps, speed, sample)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if _is_run(d)]
    return sorted((run_status(d, metrics) for d in dirs), key=lambda s: s.updated, reverse=True)


def find_run(runs_dir: str | Path, name: str) -> Path | None:
    """The run directory `name` directly under runs_dir, as list_runs would list it; None for anything else (a
    path, "..", a file, a directory that holds no run)."""
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
        return None
    d = Path(runs_dir) / name
    return d if _is_run(d) else None


def _is_run(d: Path) -> bool:
    return d.is_dir() and not d.name.startswith(".") and any((d / f).exists() for f in (JOB, METRICS, "best", "last"))


# -----------------------------------------------------------------------------
# what a run will be

@dataclass
class Plan:
    params: int
    tokens_per_step: int
    seconds_per_step: float | None  # measured on this device
    steps: int | None  # the steps the run makes: its step limit, or what the time budget buys


def plan(model_cfg: ModelConfig, cfg: TrainConfig, seconds_per_step: float | None) -> Plan:
    """A run's size before it starts. The model is built on the meta device: no memory, no time."""
    with torch.device("meta"):
        params = GPT(model_cfg).num_params()
    tokens = cfg.batch_size * cfg.grad_accum * model_cfg.block_size
    budget = cfg.time_budget if cfg.time_budget or cfg.max_steps else 300.0
    by_time = int(budget / seconds_per_step) if budget and seconds_per_step else None
    steps = min(s for s in (cfg.max_steps or None, by_time) if s) if cfg.max_steps or by_time else None
    return Plan(params, tokens, seconds_per_step, steps)


def time_step(model_cfg: ModelConfig, cfg: TrainConfig, device: str = "cpu", batch: int = 4) -> float:
    """Seconds one training step of this model takes here: forward, backward and the optimizers' step on `batch`
    rows, the fastest of three after a warm-up (a busy machine slows some), scaled to the run's batch (the part
    that grows with it) plus the optimizers' step (the part that does not)."""
    model = GPT(model_cfg).to(device)
    opts = configure_optimizers(model, cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.muon_lr,
                                device)
    x = torch.randint(model_cfg.vocab_size, (min(batch, cfg.batch_size), model_cfg.block_size), device=device)
    passes, steps = [], []
    for _ in range(4):
        t0 = time.perf_counter()
        model(x, x)[1].backward()
        _sync(device)
        t1 = time.perf_counter()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        passes.append(t1 - t0)
        steps.append(time.perf_counter() - t1)
    return min(passes[1:]) * cfg.batch_size * cfg.grad_accum / len(x) + min(steps[1:])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# the worker process

def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m llm.worker", description="Train the run in OUT as its job.json says.")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    for sig in (signal.SIGINT, signal.SIGTERM):  # until the loop installs its own graceful stop
        signal.signal(sig, _stop_now)
    try:
        status = read_json(out / STATUS)
        if status.get("stop_requested"):  # Stop pressed while this process was starting up
            raise Stopped
        write_json(out / STATUS, {**status, "state": "started", "pid": os.getpid()})
        summary = _train(out, read_json(out / JOB), args.resume)
    except Stopped:
        saved = (out / "last" / CONFIG).is_file()
        return _ended(out, "stopped", "stopped" if saved else "stopped before the first training step")
    except KeyboardInterrupt:  # a second stop signal while the first one's evaluation ran
        return _ended(out, "stopped", "stopped at once by a second stop signal; resume continues from the last save")
    except (ValueError, TrainingError, OSError, KeyError) as e:
        text = e.args[0] if isinstance(e, FieldNames) and e.args else str(e)
        return _ended(out, "failed", str(text), code=1)
    except Exception as e:  # noqa: BLE001 - a bug, or out of memory: the traceback to the log, a line to the page
        traceback.print_exc()
        return _ended(out, "failed", f"the training process failed: {type(e).__name__}: {e}", code=1)
    for sig in (signal.SIGINT, signal.SIGTERM):  # done: a late stop changes nothing now
        signal.signal(sig, signal.SIG_IGN)
    if summary["interrupted"] and run_status(out).progress() < 1:
        return _ended(out, "stopped", f"stopped at step {summary['step']}")
    return _ended(out, "finished", f"finished after {summary['step']} steps")


def _train(out: Path, job: dict, resume: bool, **slicing) -> dict:
    """The run as job.json describes it, through llm.train as train_cli.py runs it; Stop evaluates and saves.
    `slicing`: train()'s deadline and halt, for a slice."""
    if not slicing:  # a worker process of its own (a slice shares the server's threads)
        torch.set_num_threads(max(int(job.get("threads", 1)), 1))
    if resume:
        return train(None, TrainConfig(out=str(out)), resume=True, progress=False, log=print, evaluate_on_stop=True,
                     **slicing)
    model_cfg = from_dict(ModelConfig, job["model"])
    cfg = from_dict(TrainConfig, {**job["train"], "corpus": corpus_at(out, job["train"]["corpus"]), "out": str(out)})
    return train(model_cfg, cfg, progress=False, log=print, evaluate_on_stop=True, **slicing)


def train_slice(out: Path, seconds: float) -> bool:
    """Train OUT in this process for at most `seconds` (one ZeroGPU call: the GPU exists only inside it), from its
    last/ when it has one, saving last/ where the slice ends, so that slices resume exactly. OUT/halt (Studio's
    Stop) stops it as a stop signal would. True when the run has ended (finished, stopped or failed); False when
    the slice was cut and the run goes on in another."""
    out = Path(out)
    deadline = time.monotonic() + seconds
    write_json(out / STATUS, {"state": "started", "time": time.time(), "pid": os.getpid(), "slice": True})
    try:
        summary = _train(out, read_json(out / JOB), (out / "last" / CONFIG).is_file(), deadline=deadline,
                         halt=(out / HALT).is_file)
    except (ValueError, TrainingError, OSError, KeyError) as e:
        _ended(out, "failed", str(e.args[0] if isinstance(e, FieldNames) and e.args else e))
        return True
    except Exception as e:  # noqa: BLE001 - a bug, or out of memory: the traceback to the log, a line to the page
        traceback.print_exc()
        _ended(out, "failed", f"the training slice failed: {type(e).__name__}: {e}")
        return True
    if summary["interrupted"]:
        (out / HALT).unlink(missing_ok=True)
        _ended(out, "stopped", f"stopped at step {summary['step']}")
        return True
    if summary["cut"]:
        return False
    _ended(out, "finished", f"finished after {summary['step']} steps")
    return True


def _stop_now(signum, frame):
    raise Stopped


def _ended(out: Path, state: str, message: str, code: int = 0) -> int:
    print(f"{state}: {message}", flush=True)
    for where in (str(out.resolve()), str(out)):  # the page names runs, never this machine's paths
        message = message.replace(where + os.sep, "").replace(where, out.name)
    write_json(out / STATUS, {"state": state, "message": message, "time": time.time()})
    return code


def read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


if __name__ == "__main__":
    sys.exit(main())
