"""Optimizers and the learning-rate schedule.

AdamW with decay / no-decay groups (nanoGPT's split: matrices decay, norms, biases and embeddings don't), and Muon
for the 2-D weight matrices inside the transformer blocks (as modded-nanogpt and nanochat do), with AdamW keeping
the embeddings, the output head, norms and biases. Muon replaces each update by the nearest semi-orthogonal matrix
(a few Newton-Schulz iterations), so every direction of a weight matrix learns at a similar rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def get_lr(step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warmup over steps, then cosine from 1 to min_ratio.

    `progress` in [0, 1] is how far the decay is (by steps after the warmup, or by elapsed time under a time
    budget). The warmup is nanoGPT's, (step + 1) / (warmup + 1), so a reference config reproduces its schedule.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (or a stack of them, (..., m, n)), by a quintic Newton-Schulz iteration.

    The coefficients (3.4445, -4.7750, 2.0315) are the ones published with Muon; they trade exactness of the
    singular values (they end up in about [0.7, 1.2]) for speed, which training does not mind. Each step is
    x <- (a + b A + c A^2) x with A = x x^T, on the wide orientation (m <= n) so that A is the small Gram matrix.
    """
    a, b, c = NS_COEFFS
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1 so the iteration converges
    if x.dtype == torch.float32 and x.size(-1) > 1.5 * x.size(-2):
        x = _newton_schulz_gram(x, steps)
    else:
        for _ in range(steps):
            A = x @ x.mT
            x = a * x + (b * A + c * A @ A) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


def _newton_schulz_gram(x: torch.Tensor, steps: int) -> torch.Tensor:
    """The same iteration carried out on the m x m Gram matrix, touching the m x n x only twice.

    Every step multiplies x on the left by P = a + b A + c A^2, a polynomial in A = x x^T, so P commutes with A
    and the next Gram matrix is P A P. Accumulating Q = P_k ... P_1 gives x_k = Q x_0: 4m^2n + 34m^3 FLOPs
    instead of 20m^2n + 10m^3, about half for the 1:3 and 1:6 matrices of a transformer block. Exact in
    arithmetic; used in fp32 only (in bf16 the repeated products of the Gram matrix lose too much precision).
    """
    a, b, c = NS_COEFFS
    A = x @ x.mT
    Q = None
    for k in range(steps):
        P = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.dim() == 3 else torch.addmm(A, A, A, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = P if Q is None else P @ Q
        if k < steps - 1:
            A = P @ A @ P
    return Q @ x


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalize the update. Only for 2-D parameters."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            # matrices of one shape are orthogonalized together, as one batched stack: fewer, larger ops
            by_shape: dict[torch.Size, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                updates = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p.grad)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    updates.append(p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
                orth = zeropower_newton_schulz(torch.stack(updates), group["ns_steps"])
                # scale so the update's RMS does not depend on the matrix's aspect ratio
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                for p, u in zip(params, orth.unbind(0)):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u, alpha=-group["lr"] * scale)


def configure_optimizers(model: nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                         muon_lr: float = 0.02, device_type: str = "cpu") -> list[torch.optim.Optimizer]:
    """AdamW (name='adamw') or Muon + AdamW (name='muon'). Each group remembers its base lr as 'initial_lr'."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # embeddings and the output head stay on AdamW even though they are 2-D: Muon is for hidden matrices
    is_embedding = lambda n: any(s in n for s in ("wte", "wpe", "lm_head", "value_embed", "ngram"))
    matrices = [p for n, p in params.items() if p.dim() >= 2 and not is_embedding(n)]
    embeds = [p for n, p in params.items() if p.dim() >= 2 and is_embedding(n)]
    vectors = [p for n, p in params.items() if p.dim() < 2]
    fused = device_type == "cuda"
    if name == "adamw":
        groups = [{"params": matrices + embeds, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        opts = [torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)]
    elif name == "muon":
        groups = [{"params": embeds, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        opts = [torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused),
                Muon(matrices, lr=muon_lr, weight_decay=weight_decay)]
    else:
        raise ValueError(f"unknown optimizer {name!r}: choose adamw or muon")
    for opt in opts:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return opts
