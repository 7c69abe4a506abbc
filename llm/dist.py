"""Data parallel training across processes (torchrun), and the few collectives the loop needs.

    Dist.from_env() -> Dist        this process's place: rank, world size, local rank (torchrun's variables)
    dist.start(device_type)        join the process group (gloo on CPU, nccl on CUDA); a no-op for one process
    dist.mean(x) / dist.any(flag)  one number averaged / a flag or-ed over the ranks
    dist.gather(obj) -> list       every rank's object, on rank 0 (None elsewhere)
    dist.share(obj) -> obj         rank 0's object, on every rank

One process (no torchrun) is a Dist of world 1, for which every collective is the identity: the loop reads the
same with or without torchrun. Only rank 0 writes files, logs and the progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as td

TIMEOUT = datetime.timedelta(minutes=10)  # a rank silent this long in training (a hung peer) ends the run
PATIENT = datetime.timedelta(days=2)  # while rank 0 trains the tokenizer and writes the data of a big corpus


class RankLost(RuntimeError):
    """Another process of the run failed or was killed; this one stops too. One line for the user."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))  # the GPU under nccl
    patient: object = None  # a process group with the PATIENT timeout, for share(..., patient=True)

    @classmethod
    def from_env(cls) -> Dist:
        """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process it starts; absent, one process."""
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def backend(self) -> str:
        return td.get_backend() if self.active and td.is_initialized() else "none"

    def start(self, device_type: str) -> None:
        """Join the process group: nccl between GPUs (one per local rank), gloo between CPU processes."""
        if not self.active or td.is_initialized():
            return
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        backend = "nccl" if device_type == "cuda" else "gloo"
        _collective(td.init_process_group, backend, timeout=TIMEOUT)
        self.patient = _collective(td.new_group, backend=backend, timeout=PATIENT)

    def stop(self) -> None:
        if self.active and td.is_initialized():
            td.destroy_process_group()

    def _reduce(self, x: torch.Tensor, op) -> torch.Tensor:
        if not self.active:
            return x
        t = x.detach().to(self.device, copy=True)
        _collective(td.all_reduce, t, op=op)
        return t.to(x.device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over the ranks, on every rank."""
        return self._reduce(x, td.ReduceOp.SUM)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.world

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, td.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any."""
        return bool(self.max(torch.tensor([float(flag)]))[0])

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0; None on the others."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.main else None
        _collective(td.gather_object, obj, out, dst=0)
        return out

    def barrier(self, patient: bool = False) -> None:
        """Every rank waits here for all the others (`patient`: as long as PATIENT)."""
        if self.active:
            _collective(td.barrier, group=self.patient if patient else None)

    def share(self, obj, patient: bool = False):
        """Rank 0's `obj` on every rank (the others' is ignored). `patient`: wait for it as long as PATIENT (rank
        0 may be tokenizing a big corpus meanwhile), not TIMEOUT."""
        if not self.active:
            return obj
        box = [obj]
        _collective(td.broadcast_object_list, box, src=0, group=self.patient if patient else None)
        return box[0]


@contextlib.contextmanager
def peers_lost():
    """Inside, a peer gone (killed, crashed, timed out) becomes RankLost: one line instead of a trace. DDP's
    backward, which averages the gradients, is such a place, as is every collective here."""
    try:
        yield
    except RuntimeError as e:  # gloo raises RuntimeError, nccl DistBackendError (a RuntimeError too)
        text = str(e).strip()
        if not (isinstance(e, getattr(td, "DistError", ())) or any(w in text.lower() for w in ("gloo", "nccl", "connection"))):
            raise
        first = text.splitlines()[0] if text else type(e).__name__
        raise RankLost(f"another process of this run stopped, so this one stops too ({first[:160]})") from None


def _collective(fn, *args, **kwargs):
    with peers_lost():
        return fn(*args, **kwargs)
