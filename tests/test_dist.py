"""Data parallel training under torchrun: two CPU processes (gloo) against one process with two accumulation
steps fed the same batches; only rank 0 writes; exact resume with as many ranks; a killed rank ends the run."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train_cli
from conftest import ROOT, TINY
from llm import train as train_mod
from llm.checkpoint import read_metrics
from llm.run import TrainConfig, TrainingError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no torch.distributed with gloo")
STEPS, SEED, BATCH = 20, 7, 4
FLAGS = [*TINY, "--batch-size", str(BATCH), "--seed", str(SEED), "--dropout", "0", "--log-interval", "1",
         "--eval-interval", "10", "--dtype", "float32", "--device", "cpu"]


def torchrun(*args, script="train_cli.py", env=None, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / script), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def train_losses(out):
    return [r["loss"] for r in read_metrics(out) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process run of STEPS steps (shared by the tests below: a torchrun start costs seconds)."""
    tmp = tmp_path_factory.mktemp("ddp")
    from conftest import make_text

    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = tmp / "run"
    done = torchrun("--corpus", corpus, "--out", out, *FLAGS, "--max-steps", STEPS)
    assert done.returncode == 0, done.stderr[-3000:]
    return corpus, out, done


def test_two_ranks_finish_and_only_rank_0_writes(two_ranks):
    _, out, done = two_ranks
    assert done.stdout.count("best val loss") == 1  # rank 0 reports; rank 1 stays quiet
    assert "data parallel: 2 processes (gloo)" in done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["best", "data.json", "last", "metrics.jsonl", "train.bin",
                                                       "val.bin"]
    rows = read_metrics(out)
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # one writer: each step once
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [10, 20]
    meta = json.loads((out / "last" / "meta.json").read_text())
    block = int(TINY[TINY.index("--block-size") + 1])
    assert meta["world_size"] == 2 and meta["tokens_per_step"] == BATCH * 2 * block
    assert meta["tokens_seen"] == STEPS * BATCH * 2 * block  # both ranks' tokens
    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["batch"], state["rng_ranks"][1]["batch"])  # each its own batches


def test_resume_joins_the_group_on_the_device_the_run_was_saved_with(two_ranks, tmp_path):
    """--resume without --device: the process group's backend (gloo or nccl) follows the checkpoint's device,
    read before anything else, not the machine's default (a CPU run resumed on a GPU machine stays on gloo)."""
    _, out, _ = two_ranks
    assert train_cli._saved(str(out), "device", resume=True) == "cpu"  # FLAGS' --device cpu
    assert train_cli._saved(str(out), "device", resume=False) == "auto"
    assert train_cli._saved(str(tmp_path / "none"), "device", resume=True) == "auto"  # (train() says what is wrong)


def test_two_ranks_equal_one_process_accumulating_their_batches(two_ranks, tmp_path):
    """2 ranks x batch B == 1 process x batch B x 2 accumulation steps: the text read in epochs (the default),
    micro-batch r of a step is the batch rank r reads."""
    corpus, out, _ = two_ranks
    one = tmp_path / "one"
    assert train_cli.main(["--corpus", str(corpus), "--out", str(one), *FLAGS, "--max-steps", str(STEPS),
                           "--grad-accum", "2"]) == 0
    one, two = train_losses(one), train_losses(out)
    assert len(one) == len(two) == STEPS
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, list(zip(one, two))
    evals = [[r["val_loss"] for r in read_metrics(d) if r["kind"] == "eval"] for d in (tmp_path / "one", out)]
    assert evals[0] == pytest.approx(evals[1], abs=1e-5)  # evaluation shared out over the ranks: the same figure


def test_a_stop_on_one_rank_stops_both_and_resumes_exactly(two_ranks, tmp_path):
    """Ctrl-C reaching rank 0 alone: both ranks stop after the same step, last/ holds both random states, and
    resuming with 2 processes continues as the run that was never stopped."""
    corpus, out, _ = two_ranks
    half = tmp_path / "half"
    first = torchrun("--corpus", corpus, "--out", half, *FLAGS, "--max-steps", STEPS, script="tests/signal_rank.py",
                     env={"SIGNAL_RANK": "0", "SIGNAL_STEP": "13", "SIGNAL": "INT"})
    assert "stopped at step 14" in first.stdout, first.stdout[-2000:] + first.stderr[-3000:]
    rest = torchrun("--out", half, "--resume", "--no-progress")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert train_losses(half) == train_losses(out)
    assert (half / "last" / "model.safetensors").read_bytes() == (out / "last" / "model.safetensors").read_bytes()
    # another number of processes is refused, in one line, and the checkpoints stay
    with pytest.raises(TrainingError, match="trained by 2 process"):
        train_mod.train(None, TrainConfig(out=str(half)), resume=True, progress=False, log=lambda s: None)
    assert json.loads((half / "last" / "meta.json").read_text())["step"] == STEPS


def test_under_a_time_budget_the_ranks_keep_one_clock(two_ranks, tmp_path):
    """The schedule and the budget follow the training time, which each process measures for itself: the ranks
    must share one clock, or their learning rates differ and their copies of the model drift apart."""
    corpus, _, _ = two_ranks
    flags = [f for f in FLAGS if f not in ("--eval-interval", "10")]
    done = torchrun("--corpus", corpus, "--out", tmp_path / "timed", *flags, "--time-budget", "3",
                    "--eval-interval", "1000", script="tests/signal_rank.py", env={"WEIGHTS_TO": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    ends = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert ends[0] == ends[1] and int(ends[0].split()[0]) > 5  # the same step, the same weights


def test_a_killed_rank_ends_the_run_with_one_line(two_ranks, tmp_path):
    corpus, _, _ = two_ranks
    out = tmp_path / "killed"
    done = torchrun("--corpus", corpus, "--out", out, *FLAGS, "--max-steps", STEPS, script="tests/signal_rank.py",
                    env={"SIGNAL_RANK": "1", "SIGNAL_STEP": "12", "SIGNAL": "KILL"}, timeout=120)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("train_cli.py: error:")]
    assert len(said) == 1 and "another process of this run stopped" in said[0], done.stderr[-3000:]
    assert "[rank0]: Traceback" not in done.stderr  # (torchrun's own report of the killed rank follows it)
    assert json.loads((out / "last" / "meta.json").read_text())["step"] == 10  # what was saved stays


def test_two_machines_sharing_a_disk(two_ranks, tmp_path):
    """The README's several-machines command, as two torchrun agents of one process each meeting through the c10d
    rendezvous: the same run as two processes of one agent, though each machine's first process writes the data."""
    import socket

    corpus, out, _ = two_ranks
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    both = tmp_path / "both"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test", str(ROOT / "train_cli.py"), "--corpus", str(corpus),
           "--out", str(both), *FLAGS, "--max-steps", str(STEPS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [a.communicate(timeout=240) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum(o.count("best val loss") for o, _ in outputs) == 1
    assert train_losses(both) == pytest.approx(train_losses(out), abs=1e-6)
