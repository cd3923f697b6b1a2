"""L2-regularised multinomial logistic regression by full-batch L-BFGS in torch: the solver of the
L-BFGS linear probe (``simclr.evaluate.linear.lbfgs_probe``).

The objective is scikit-learn's ``LogisticRegression(C=c, solver="lbfgs")`` (scikit-learn >= 1.1), so the
probe keeps its meaning and its numbers when the solver changes:

    mean_i cross_entropy(W x_i + b, y_i) + ||W||^2 / (2 c n)        (the intercept b is not penalised)

with one weight row per class for three classes or more, and one row (logits [0, w x + b], the
logistic loss) for two. It runs on the features' device in float64, without autograd: the loss and its
gradient take two matrix products.

The minimiser is L-BFGS (a memory of ``HISTORY`` pairs, as scipy's L-BFGS-B) with a backtracking
Armijo line search (the objective is convex, so every step's curvature is positive without the Wolfe
curvature condition), run in preconditioned coordinates V = W L, where L L^T is the Hessian the
objective would have with uniform class probabilities (the features' second moments / K, plus the
penalty): the same minimiser, reached in fewer iterations when features are correlated. It stops as
scikit-learn stops: the largest entry of the gradient in W at most ``tol``, a relative decrease of the
objective at most ``ftol``, or ``max_iter`` iterations. Nothing is random: the same inputs give the same
weights (on the same machine and thread count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["FTOL", "LogisticFit", "fit_logistic", "objective"]

HISTORY = 10  # L-BFGS memory (scipy's L-BFGS-B default, which scikit-learn uses)
FTOL = 64 * torch.finfo(torch.float64).eps  # scikit-learn's relative decrease for L-BFGS-B
ARMIJO = 1e-4  # sufficient decrease of the line search
MAX_LS = 50  # line search trials (scikit-learn passes maxls=50)


@dataclass
class LogisticFit:
    """Weights (R, D + 1) (the intercept last; R = K classes, or 1 for two classes), iterations and
    whether a tolerance (not ``max_iter``) stopped the solver."""

    weights: torch.Tensor
    num_classes: int
    n_iter: int
    converged: bool

    @property
    def coef(self) -> torch.Tensor:
        return self.weights[:, :-1]

    @property
    def intercept(self) -> torch.Tensor:
        return self.weights[:, -1]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n, K) class scores of features ``x`` (n, D); for two classes the first column is 0."""
        z = x.to(self.weights) @ self.coef.T + self.intercept
        return torch.cat([torch.zeros_like(z), z], 1) if self.num_classes == 2 else z

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), 1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)


def _penalty_mask(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(rows, cols, dtype=like.dtype, device=like.device)
    mask[:, -1] = 0
    return mask


def _loss_grad(xa: torch.Tensor, onehot: torch.Tensor, w: torch.Tensor, l2: float, mask: torch.Tensor):
    """The objective and its gradient at ``w`` (R, D + 1) for features with a ones column ``xa`` (n, D + 1)."""
    z = xa @ w.T
    if w.shape[0] == 1:  # two classes: logits [0, z]
        z = torch.cat([torch.zeros_like(z), z], 1)
    lse = torch.logsumexp(z, 1)
    penalty = w * mask
    loss = (lse - (z * onehot).sum(1)).mean() + 0.5 * l2 * (penalty * penalty).sum()
    r = torch.exp(z - lse[:, None]) - onehot
    if w.shape[0] == 1:
        r = r[:, 1:]
    return loss, (r.T @ xa) / len(xa) + l2 * penalty


def objective(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, weights: torch.Tensor) -> float:
    """The minimised objective at ``weights`` (R, D + 1)."""
    xa = _with_ones(x.to(weights))
    onehot = torch.nn.functional.one_hot(y.to(weights.device), num_classes).to(weights)
    mask = _penalty_mask(*weights.shape, weights)
    return float(_loss_grad(xa, onehot, weights, 1.0 / (c * len(x)), mask)[0])


def _preconditioner(xa: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor | None:
    """L (lower triangular) with L L^T = xa^T xa / (n K) + l2 (penalised coordinates), a little jitter
    for exactly collinear features; None when that is not positive definite in float64 (then no
    preconditioning: slower, same minimiser)."""
    p = xa.T @ xa / (len(xa) * num_classes)
    diag = torch.full((len(p),), l2, dtype=p.dtype, device=p.device)
    diag[-1] = 0.0
    p = p + torch.diag(diag + 1e-10 * p.diagonal().mean())
    chol, info = torch.linalg.cholesky_ex(p)
    return chol if int(info) == 0 and bool(torch.isfinite(chol).all()) else None


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, *, init: torch.Tensor | None = None,
                 max_iter: int = 1000, tol: float = 1e-6, ftol: float = FTOL) -> LogisticFit:
    """Minimise the objective for features ``x`` (n, D) and labels ``y`` (n,) in [0, ``num_classes``),
    ``num_classes`` >= 2, inverse L2 strength ``c``, from ``init`` (the weights of an earlier fit: a warm
    start) or zeros, on ``x``'s device in float64. Stops when the largest gradient entry is at most ``tol``,
    the objective decreased by at most ``ftol`` relative to it, or after ``max_iter`` iterations."""
    if num_classes < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got {num_classes}")
    xa = _with_ones(x.to(torch.float64))
    rows = 1 if num_classes == 2 else num_classes
    onehot = torch.nn.functional.one_hot(y.to(xa.device), num_classes).to(xa)
    w = torch.zeros(rows, xa.shape[1], dtype=xa.dtype, device=xa.device) if init is None else init.to(xa).clone()
    if w.shape != (rows, xa.shape[1]):
        raise ValueError(f"init has shape {tuple(w.shape)}, expected {(rows, xa.shape[1])}")
    mask = _penalty_mask(rows, xa.shape[1], xa)
    l2 = 1.0 / (c * len(xa))
    chol = _preconditioner(xa, num_classes, l2)
    if chol is None:
        w, n_iter, converged = _lbfgs(lambda v: (*_loss_grad(xa, onehot, v, l2, mask), None), w, max_iter, tol, ftol)
        return LogisticFit(w, num_classes, n_iter, converged)

    def to_w(v: torch.Tensor) -> torch.Tensor:  # W = V L^-1
        return torch.linalg.solve_triangular(chol.T, v.T, upper=True).T

    def fg(v: torch.Tensor):  # the objective, its gradient in V (G_W L^-T) and in W
        f, g = _loss_grad(xa, onehot, to_w(v), l2, mask)
        return f, torch.linalg.solve_triangular(chol, g.T, upper=False).T, g

    v, n_iter, converged = _lbfgs(fg, w @ chol, max_iter, tol, ftol)
    return LogisticFit(to_w(v), num_classes, n_iter, converged)


def _lbfgs(fg, v: torch.Tensor, max_iter: int, tol: float, ftol: float) -> tuple[torch.Tensor, int, bool]:
    """Minimise over ``v``: ``fg(v)`` gives (objective, gradient in v, gradient the ``tol`` test reads, or
    None for the gradient in v). L-BFGS (two-loop recursion) with backtracking Armijo steps; returns
    (v, iterations, converged). The recursion keeps its scalars as tensors (no device synchronisation);
    the line search and the stopping tests read a few numbers an iteration."""

    def evaluate(u):
        f_t, g_u, g_test = fg(u)
        return float(f_t), g_u, g_u if g_test is None else g_test

    f, g, g_test = evaluate(v)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    gamma: torch.Tensor | float = 1.0
    n_iter = 0
    while True:
        if float(g_test.abs().max()) <= tol:
            return v, n_iter, True
        if n_iter >= max_iter:
            return v, n_iter, False
        gtd = 0.0
        if s_hist:  # the direction -H g, by the two-loop recursion
            q = -g
            alpha = []
            for s, yv, r in zip(reversed(s_hist), reversed(y_hist), reversed(rho)):
                a = r * (s * q).sum()
                q = q - a * yv
                alpha.append(a)
            d = gamma * q
            for s, yv, r, a in zip(s_hist, y_hist, rho, reversed(alpha)):
                d = d + (a - r * (yv * d).sum()) * s
            gtd, t = float((g * d).sum()), 1.0
        if not s_hist or gtd >= 0:  # the first step, or a memory that lost descent: steepest descent, scaled
            s_hist.clear(), y_hist.clear(), rho.clear()
            d = -g
            gtd = -float((g * g).sum())
            t = min(1.0, 1.0 / math.sqrt(-gtd))
        # backtracking line search (quadratic interpolation, kept within [0.1 t, 0.5 t])
        for _ in range(MAX_LS):
            v_new = v + t * d
            f_new, g_new, g_test_new = evaluate(v_new)
            if math.isfinite(f_new) and f_new <= f + ARMIJO * t * gtd:
                break
            denom = 2.0 * (f_new - f - gtd * t)
            t_q = -gtd * t * t / denom if math.isfinite(f_new) and denom > 0 else 0.5 * t
            t = min(max(t_q, 0.1 * t), 0.5 * t)
        else:  # no decrease at the precision of float64: as far as it goes
            return v, n_iter, True
        n_iter += 1
        s, yv = v_new - v, g_new - g
        ys, yy = (yv * s).sum(), (yv * yv).sum()
        if float(ys) > 1e-10 * float(yy):  # positive curvature (always, for a convex objective)
            if len(s_hist) == HISTORY:
                s_hist.pop(0), y_hist.pop(0), rho.pop(0)
            s_hist.append(s), y_hist.append(yv), rho.append(1.0 / ys)
            gamma = ys / yy
        f_prev, v, f, g, g_test = f, v_new, f_new, g_new, g_test_new
        if f_prev - f <= ftol * max(abs(f_prev), abs(f), 1.0):
            return v, n_iter, True
