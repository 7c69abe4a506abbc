"""The GPU paths, on the CPU where they can run there: the choice of each path for a device, bf16 autocast and
torch.compile in a real run, fused AdamW. What only a GPU can run (pinned memory, TF32 switches) is checked where
one is present and skipped, saying why, where not; bench/gpu_check.sh measures them on a GPU."""

import pytest
import torch

import train_cli
from conftest import TINY
from llm.checkpoint import read_metrics
from llm.model import GPT, ModelConfig
from llm.optim import configure_optimizers
from llm.runtime import pick_dtype

NO_CUDA = "needs a CUDA GPU (this machine has none): bench/gpu_check.sh covers it on one"


def test_each_device_gets_its_precision(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", cuda) == torch.bfloat16 and pick_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4, a V100
    assert pick_dtype("auto", cuda) == torch.float16
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16 and pick_dtype("auto", torch.device("mps")) == torch.float32


def test_adamw_is_fused_on_cuda_only():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    for device, fused in (("cuda", True), ("cpu", False)):
        for name in ("adamw", "muon"):
            adamw = configure_optimizers(model, name, 1e-3, 0.1, (0.9, 0.95), device_type=device)[0]
            assert isinstance(adamw, torch.optim.AdamW) and bool(adamw.defaults["fused"]) == fused


def _run(corpus, out, *flags):
    rc = train_cli.main(["--corpus", str(corpus), "--out", str(out), *TINY, "--max-steps", "12", "--eval-interval",
                         "6", "--log-interval", "1", "--device", "cpu", *flags])
    assert rc == 0
    return [r["loss"] for r in read_metrics(out) if r["kind"] == "train"]


def test_bf16_autocast_trains(corpus, tmp_path):
    """--dtype bfloat16 runs the GPU's precision on the CPU: it learns, close to fp32, and saves fp32 weights."""
    fp32 = _run(corpus, tmp_path / "fp32")
    bf16 = _run(corpus, tmp_path / "bf16", "--dtype", "bfloat16")
    assert bf16[-1] < bf16[0] - 0.3 and abs(bf16[-1] - fp32[-1]) < 0.1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "last" / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())  # noqa: SIM118 (safe_open has no __iter__)


def test_compiled_training_equals_eager(corpus, tmp_path, capsys):
    """--compile (the default on CUDA) through inductor on the CPU: the same losses as eager, to float rounding."""
    eager = _run(corpus, tmp_path / "eager")
    capsys.readouterr()
    compiled = _run(corpus, tmp_path / "compiled", "--compile")
    said = capsys.readouterr().out
    assert len(compiled) == len(eager) == 12
    assert max(abs(a - b) for a, b in zip(compiled, eager)) < 1e-3, (compiled, eager)
    if "torch.compile failed" in said:  # the fallback did its job; the compiled path itself could not be checked
        pytest.skip("torch.compile cannot build on this machine (no C++ compiler?); the run went on eager")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_batches_reach_the_gpu_from_pinned_memory():  # pragma: no cover - a GPU machine's
    import numpy as np

    from llm.data import get_batch

    x, y = get_batch(np.arange(1000, dtype=np.uint16), 8, 4, torch.Generator().manual_seed(0), "cuda")
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 1:].cpu(), y[:, :-1].cpu())
