"""A studio open to the public (a Hugging Face Space): whose run is whose, the line of runs waiting to train, the
caps that keep the server's disk in bounds, and a run as one archive to take away. No gradio here.

    owner_id(key)                      a visitor's key (random, kept in their browser) -> the id a run records
    owns(status, key), provided(status)
                                       a visitor's own run; a run nobody's visitor started (the Space owner's)
    enqueue(out, resume), line(runs_dir), place(runs_dir, name), leave(out)
                                       the runs waiting for a free place to train, oldest first
    disk_used(path), prune(runs_dir, keep, max_bytes)
                                       bytes under a directory; the oldest finished visitor runs removed for room
    archive(out, dest_dir)             the run's model, curves and settings as NAME.zip

A key never reaches a file: runs record its hash. Run names end in 12 random hex digits (worker.new_run), and
every page handler finds a run by name among the visitor's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from llm.worker import JOB, QUEUED, STATUS, RunStatus, list_runs, read_json, write_json

KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
ARCHIVED = ("best", "metrics.jsonl", JOB, STATUS)  # the model and how it was made (not the token files, the
#                                                  text or last/'s optimizer state, which are large)


def owner_id(key) -> str | None:
    """The id a run records for the visitor whose key this is; None for anything that is no key."""
    if not isinstance(key, str) or not KEY.fullmatch(key):
        return None
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:32]


def owns(s: RunStatus, key) -> bool:
    oid = owner_id(key)
    return oid is not None and s.owner == oid


def provided(s: RunStatus) -> bool:
    """A run no visitor started (train_cli.py's, or one the Space's owner put there): everyone's to open, nobody's
    to stop, download or delete from the page."""
    return s.owner is None


# -----------------------------------------------------------------------------
# the line

def enqueue(out: Path, resume: bool = False) -> None:
    """Put a run in the line (a new run, or a stopped one to resume): the keeper launches it in its turn."""
    write_json(out / QUEUED, {"time": time.time(), "resume": resume})
    write_json(out / STATUS, {"state": "queued", "time": time.time()})


def line(runs_dir: str | Path) -> list[tuple[Path, bool]]:
    """(run directory, resume?) of every run waiting, in the order they joined."""
    waiting = []
    for d in Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else []:
        marker = read_json(d / QUEUED) if (d / QUEUED).is_file() else None
        if marker is not None:
            t = marker.get("time")
            waiting.append((t if isinstance(t, (int, float)) else 0.0, d.name, d, bool(marker.get("resume"))))
    return [(d, resume) for _, _, d, resume in sorted(waiting)]


def place(runs_dir: str | Path, name: str) -> int | None:
    """A waiting run's place in the line, 1 first; None when it is not waiting."""
    names = [d.name for d, _ in line(runs_dir)]
    return names.index(name) + 1 if name in names else None


def leave(out: Path) -> None:
    """A waiting run taken out of the line (its Stop): it ends stopped, as a run stopped before it trained."""
    (out / QUEUED).unlink(missing_ok=True)
    write_json(out / STATUS, {"state": "stopped", "message": "left the line before it trained",
                               "time": time.time()})


# -----------------------------------------------------------------------------
# room on the disk

def disk_used(path: str | Path) -> int:
    """Bytes of the files under path (files that vanish meanwhile count nothing)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def prune(runs_dir: str | Path, keep: int | None, max_bytes: int | None) -> list[str]:
    """Make room for one more run: remove the oldest finished visitor runs (never one training or waiting, never
    a provided one) while the runs number `keep` or more, or use `max_bytes` or more. Returns the names removed."""
    runs = list_runs(runs_dir)  # newest first
    count, removed = len(runs), []
    used = disk_used(runs_dir) if max_bytes is not None else 0
    for r in reversed(runs):
        if provided(r) or r.live or r.state == "queued":
            continue
        if not (keep is not None and count >= keep or max_bytes is not None and used >= max_bytes):
            break
        used -= disk_used(Path(runs_dir) / r.name) if max_bytes is not None else 0
        shutil.rmtree(Path(runs_dir) / r.name, ignore_errors=True)
        count -= 1
        removed.append(r.name)
    return removed


# -----------------------------------------------------------------------------
# taking a run away

def archive(out: Path, dest_dir: str | Path) -> Path:
    """OUT's model (best/), its metrics and its settings as dest_dir/NAME.zip, under a folder NAME/: unzipped, the
    folder loads as a checkpoint (`load_checkpoint("NAME")`). The visitor's mark is left out of job.json."""
    dest = Path(dest_dir) / f"{out.name}.zip"
    fd, part = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".part", dir=dest_dir)  # one per download
    try:
        with os.fdopen(fd, "wb") as file:
            _zip_run(out, file)
        os.replace(part, dest)  # a download served meanwhile gets the whole last archive, never half of this one
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return dest


def _zip_run(out: Path, file) -> None:
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ARCHIVED:
            p = out / name
            if name == JOB and p.is_file():
                job = {k: v for k, v in read_json(p).items() if k != "owner"}
                z.writestr(f"{out.name}/{JOB}", json.dumps(job, indent=1))
            elif p.is_file():
                z.write(p, f"{out.name}/{name}")
            elif p.is_dir():
                for f in sorted(p.iterdir()):
                    if f.is_file():
                        z.write(f, f"{out.name}/{name}/{f.name}")
