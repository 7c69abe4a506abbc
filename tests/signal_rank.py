"""For tests/test_dist.py: train_cli.py under torchrun, with one rank sent a signal just before a step:
SIGNAL_RANK, SIGNAL_STEP, SIGNAL (KILL: as an out-of-memory kill or a lost machine would end it; INT: Ctrl-C).
With WEIGHTS_TO set, each rank writes a hash of its model's weights there at the end (rank<r>.txt)."""

import hashlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_cli
from llm import train as train_mod

step_once = train_mod.train_step


loop_once = train_mod.train_loop


def train_step(run):
    if run.dist.rank == int(os.environ.get("SIGNAL_RANK", "-1")) and run.state.step == int(os.environ["SIGNAL_STEP"]):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["SIGNAL"]))
    return step_once(run)


def train_loop(run, *args, **kwargs):
    summary = loop_once(run, *args, **kwargs)
    if "WEIGHTS_TO" in os.environ:
        h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in run.model.parameters()))
        (Path(os.environ["WEIGHTS_TO"]) / f"rank{run.dist.rank}.txt").write_text(f"{run.state.step} {h.hexdigest()}")
    return summary


train_mod.train_step = train_step
train_mod.train_loop = train_loop
sys.exit(train_cli.main())
