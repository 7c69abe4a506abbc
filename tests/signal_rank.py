"""For tests/test_dist.py: train_cli.py under torchrun, with one rank sent a signal just before a step:
SIGNAL_RANK, SIGNAL_STEP, SIGNAL (KILL: as an out-of-memory kill or a lost machine would end it; INT: Ctrl-C)."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_cli  # noqa: E402
from llm import train as train_mod  # noqa: E402

step_once = train_mod.train_step


def train_step(run):
    if run.dist.rank == int(os.environ["SIGNAL_RANK"]) and run.state.step == int(os.environ["SIGNAL_STEP"]):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["SIGNAL"]))
    return step_once(run)


train_mod.train_step = train_step
sys.exit(train_cli.main())
