"""The learning-rate schedule and Muon's orthogonalization."""

import math

import pytest
import torch

from llm.optim import Muon, get_lr, zeropower_newton_schulz


def nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """nanoGPT's train.py schedule, written out from its description, to check ours against."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000])
def test_schedule_matches_nanogpt_by_steps(it):
    lr, min_lr, warmup, steps = 1e-3, 1e-4, 100, 2000
    progress = (it - warmup) / (steps - warmup)  # what the trainer passes for a step-limited run
    assert get_lr(it, progress, warmup, min_lr / lr) * lr == pytest.approx(nanogpt_lr(it, lr, min_lr, warmup, steps))


def test_schedule_ends_at_min_ratio_and_never_below():
    assert get_lr(10, 1.0, 5, 0.1) == pytest.approx(0.1)
    assert get_lr(10, 7.0, 5, 0.1) == pytest.approx(0.1)  # progress past the end is clamped
    assert get_lr(0, 0.0, 0, 0.1) == pytest.approx(1.0)  # no warmup: starts at the full rate


def plain_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The textbook iteration in float64, on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return x.mT if tall else x


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (16, 96), (3, 16, 96), (32, 32), (2, 40, 24)])
def test_newton_schulz_gram_form_equals_the_plain_iteration(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = zeropower_newton_schulz(g)
    assert got.shape == g.shape and got.dtype == g.dtype
    torch.testing.assert_close(got.double(), plain_newton_schulz(g), atol=1e-5, rtol=1e-4)


def test_newton_schulz_output_is_nearly_orthogonal():
    g = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(zeropower_newton_schulz(g))
    assert 0.6 < s.min() and s.max() < 1.25  # the published coefficients land the singular values around 1


def test_muon_stacked_step_equals_one_matrix_at_a_time():
    gen = torch.Generator().manual_seed(2)
    shapes = [(24, 8), (24, 8), (8, 8), (8, 40)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    singles = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = Muon(params, lr=0.05, weight_decay=0.1)
    opts = [Muon([p], lr=0.05, weight_decay=0.1) for p in singles]
    for _ in range(3):
        for p, q, g in zip(params, singles, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, q in zip(params, singles):
        torch.testing.assert_close(p, q)
