"""What a training run needs from the machine and the process: the device and precision, every random state
(to save and restore for an exact resume), and a graceful stop on SIGINT / SIGTERM."""

from __future__ import annotations

import contextlib
import random
import signal

import numpy as np
import torch

from llm.config import SettingError


# -----------------------------------------------------------------------------
# devices and precision

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingError("`device` cuda: no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SettingError("`device` mps: MPS is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 autocast on GPUs that have it, fp16 (with a grad scaler) on older ones, fp32 on CPU and MPS.

    bf16 autocast on a CPU without native bf16 matmul is slower than fp32, so CPU stays fp32 unless asked.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def vocab_multiple(device: torch.device) -> int:
    """What a new run rounds its token table's rows up to: 64 on CUDA (whole tiles for the tensor cores, as
    nanoGPT's 50304), 1 on a CPU or MPS, where the extra rows would only cost."""
    return 64 if device.type == "cuda" else 1


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12),
                       ("T4", 65e12), ("4090", 165e12), ("3090", 71e12)):
        if key in name:
            return flops
    return None


# -----------------------------------------------------------------------------
# random states and signals

def rng_state(batch_gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),  # weights_only cannot hold the tuple-of-tuples form
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "batch": batch_gen.get_state(),
    }


def set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    batch_gen.set_state(state["batch"])


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, save last/, exit. Second: stop at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = 0

    def __call__(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, self)
        except ValueError:  # not the main thread: leave signals alone
            old = {}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
