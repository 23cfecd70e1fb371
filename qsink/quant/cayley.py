"""Cayley SGD: gradient descent that keeps a matrix orthogonal, for learned rotations (SpinQuant).

The update is Algorithm 1 of "Efficient Riemannian Optimization on the Stiefel Manifold via the
Cayley Transform" (Li, Li and Todorovic, arXiv 2002.01113), the optimizer SpinQuant (Liu et al.,
arXiv 2405.16406) trains its rotations with. For a point ``X`` (n x p, ``X^T X = I``), its
Euclidean gradient ``G``, momentum ``beta`` and learning rate ``lr``:

1. ``M <- beta M - G``;
2. ``W_hat = M X^T - 1/2 X (X^T M X^T)`` and ``W = W_hat - W_hat^T`` (skew-symmetric: the step's
   direction in the tangent space), and ``M <- W X``;
3. the step size ``alpha = min(lr, 2q / (||W|| + eps))`` (q = 1/2): bounded by the step's norm,
   so that the fixed-point iteration below contracts;
4. ``Y <- X + alpha M``, then ``Y <- X + alpha/2 W (X + Y)`` repeated: the fixed point is the Cayley
   transform ``(I - alpha/2 W)^{-1} (I + alpha/2 W) X``, which is exactly orthogonal.

The paper stops after two iterations; the contraction factor is ``alpha ||W||_2 / 2 <= 1/2``, so two
leave up to a quarter of the first error off the manifold, which accumulates over a hundred steps.
Here the iteration runs until it moves by less than ``tol`` (at most ``max_iters``), which keeps the
rotation orthogonal to float64 precision; the number of iterations is kept in ``last_iters``.
"""

from __future__ import annotations

import math

import torch


class CayleySGD(torch.optim.Optimizer):
    """Cayley SGD over square or tall matrices with orthonormal columns. Parameters are updated in place
    and stay on the Stiefel manifold; ``momentum=0`` is SpinQuant's setting."""

    def __init__(self, params, lr: float = 1.5, momentum: float = 0.0, q: float = 0.5, eps: float = 1e-8,
                 tol: float = 1e-12, max_iters: int = 100):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError("Cayley SGD needs lr > 0 and 0 <= momentum < 1")
        super().__init__(params, dict(lr=lr, momentum=momentum, q=q, eps=eps, tol=tol, max_iters=max_iters))
        self.last_iters = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        iters = 0
        for group in self.param_groups:
            for X in group["params"]:
                if X.grad is None:
                    continue
                state = self.state[X]
                M = state.get("momentum")
                M = -X.grad if M is None or group["momentum"] == 0 else group["momentum"] * M - X.grad
                W_hat = M @ X.T - 0.5 * X @ (X.T @ M @ X.T)
                W = W_hat - W_hat.T
                M = W @ X
                state["momentum"] = M
                alpha = min(group["lr"], 2 * group["q"] / (float(torch.linalg.matrix_norm(W)) + group["eps"]))
                Y = X + alpha * M
                for i in range(group["max_iters"]):
                    Y_next = X + (alpha / 2) * (W @ (X + Y))
                    moved = float((Y_next - Y).abs().max())
                    Y = Y_next
                    if moved < group["tol"]:
                        break
                iters = max(iters, i + 1)
                X.copy_(Y)
        self.last_iters = iters
        return loss


def cosine_lr(base: float, step: int, steps: int) -> float:
    """The cosine schedule from ``base`` at step 0 down to 0 after ``steps``."""
    return 0.5 * base * (1 + math.cos(math.pi * step / max(steps, 1)))


def orthogonality_error(X: torch.Tensor) -> float:
    """``max |X^T X - I|``."""
    return float((X.T @ X - torch.eye(X.shape[1], dtype=X.dtype, device=X.device)).abs().max())
