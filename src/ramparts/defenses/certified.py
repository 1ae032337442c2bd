"""Certified upper bound on the damage of data poisoning against a defended linear SVM.

Steinhardt, Koh & Liang 2017, "Certified Defenses for Data Poisoning Attacks" (NeurIPS), Algorithm 1:
the attacker adds eps*n points, each inside the defender's feasible set F (the sphere and slab of its
class around oracle centroids, and the input box [0, 1]^d when `box=True`). For any parameter theta,
``U(theta) = L_clean(theta) + eps * max_{(x, y) in F} hinge(theta; x, y)`` is at least the training loss
that any such attack can force (the learner's minimum over theta is at most its value at theta).
Gradient descent on U over theta keeps ``U* = min_t U(theta_t)``, a bound on the clean+poison training
loss (normalised by the n clean points); the attack points met on the way form a candidate attack,
whose damage (test error after retraining with the defence applied) is a lower bound. U(theta) at a
smaller eps is at most U(theta) at a larger one, so U* for each eps is the minimum over the iterates of
every eps's descent: a valid bound that is monotone in eps.

The bound takes the clean data as fixed (the defence is assumed to remove no clean point, the paper's
approximation); the candidate attack is evaluated with the defence applied to clean and poison records.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import optimize
from torch import Tensor

from ramparts.data import Dataset
from ramparts.defenses.sanitization import SphereSlab, centroids, fit_sphere_slab
from ramparts.errors import RampartsTypeError, check_int, invalid

if TYPE_CHECKING:
    import cvxpy as cp

__all__ = ["CertifiedBound", "FeasibleSet", "certify_linear_svm", "hinge_objective", "train_linear_svm"]

logger = logging.getLogger(__name__)

_LABELS = (-1.0, 1.0)  # row k of FeasibleSet.maximize is the attack point with label _LABELS[k]


@dataclass(frozen=True)
class CertifiedBound:
    """Bound and candidate attack for each poisoned fraction in `eps`.

    `upper_bound[i]`: U*, the bound on the clean+poison training loss (hinge + L2, divided by the n
    clean points) that any attack of eps[i]*n feasible points can cause. `candidate_test_error[i]`:
    test 0-1 error of the SVM retrained on clean + the candidate attack, defence applied.
    """

    eps: list[float]
    upper_bound: list[float]
    candidate_test_error: list[float]
    clean_test_error: float
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "eps": self.eps,
            "upper_bound": self.upper_bound,
            "candidate_test_error": self.candidate_test_error,
            "clean_test_error": self.clean_test_error,
            "config": self.config,
            **self.extra,
        }


class FeasibleSet:
    """The attacker's feasible set per label: sphere and slab of the class (if any) and the box [0, 1]^d.

    `maximize(w, b)` solves, for each label y in (-1, +1), ``max_x hinge = max(0, 1 - y (w.x + b))`` over
    the set: a linear objective over a ball, a slab and a box, a convex program solved with cvxpy (the
    box alone has the closed form x_j = 1 where y w_j < 0, else 0).
    """

    def __init__(
        self, defence: SphereSlab | None, *, dim: int, box: bool = True, solver: str = "CLARABEL"
    ) -> None:
        if defence is None and not box:
            raise invalid(
                "box", box, "True when there is no defence", "the feasible set is unbounded otherwise"
            )
        if defence is not None and not box and not bool(torch.isfinite(defence.sphere_radii).all()):
            raise invalid("box", box, "True when the sphere is off", "pass box=True or a sphere_quantile")
        import cvxpy as cp  # imported here: it is slow to import and only this class needs it

        if solver not in cp.installed_solvers():
            raise invalid("solver", solver, f"one of {cp.installed_solvers()}")
        self.defence, self.box, self.dim, self.solver = defence, box, dim, solver
        self._cost = cp.Parameter(dim)
        self._x = cp.Variable(dim)
        self._problems = [] if defence is None else [self._problem(defence, k) for k in range(2)]

    def _problem(self, defence: SphereSlab, k: int) -> cp.Problem:
        import cvxpy as cp

        mu = defence.centers[k].numpy()
        cons = []
        sphere, slab = float(defence.sphere_radii[k]), float(defence.slab_radii[k])
        if math.isfinite(sphere):
            cons.append(cp.norm(self._x - mu, 2) <= sphere)
        if math.isfinite(slab):
            cons.append(cp.abs(defence.directions[k].numpy() @ (self._x - mu)) <= slab)
        if self.box:
            cons += [self._x >= 0.0, self._x <= 1.0]
        return cp.Problem(cp.Minimize(self._cost @ self._x), cons)

    def maximize(self, w: Tensor, b: float) -> tuple[Tensor, Tensor]:
        """Worst-case point per label: `x` [2, D] (row 0 label -1, row 1 label +1) and its hinge loss [2]."""
        w64 = w.detach().to(torch.float64).reshape(-1)
        points = torch.empty(2, self.dim, dtype=torch.float64)
        for k, label in enumerate(_LABELS):
            if self.defence is None:
                points[k] = (label * w64 < 0).to(torch.float64)
                continue
            self._cost.value = (label * w64).numpy()
            problem = self._problems[k]
            problem.solve(solver=self.solver)
            if problem.status not in ("optimal", "optimal_inaccurate") or self._x.value is None:
                raise RuntimeError(
                    f"feasible-set maximisation failed for label {label:+.0f}: {problem.status}"
                )
            points[k] = torch.from_numpy(np.asarray(self._x.value, dtype=np.float64))
        if self.box:
            points.clamp_(0.0, 1.0)
        labels = torch.tensor(_LABELS, dtype=torch.float64)
        return points, (1.0 - labels * (points @ w64 + b)).clamp_min(0.0)


def hinge_objective(w: Tensor, b: float, x: Tensor, y: Tensor, *, l2: float, n: int | None = None) -> float:
    """``sum hinge / n + l2/2 (|w|^2 + b^2)``: the SVM objective (`n` defaults to the number of records)."""
    margins = 1.0 - y * (x @ w + b)
    total = float(margins.clamp_min(0.0).sum())
    return total / (n or len(y)) + 0.5 * l2 * (float(w @ w) + b * b)


def train_linear_svm(
    x: Tensor, y: Tensor, *, l2: float = 0.01, max_iter: int = 5000, tol: float = 1e-9
) -> tuple[Tensor, float]:
    """Linear SVM: minimise mean hinge + l2/2 (|w|^2 + b^2) over (w, b); deterministic.

    Solved in the dual (box-constrained quadratic, scipy's L-BFGS-B); the intercept is a constant feature
    of 1, so it is regularised like the weights (liblinear's convention), which keeps the dual free of the
    equality constraint. `x` [N, ...] is flattened; `y` holds labels -1/+1. Returns (w [D] float64, b).
    """
    flat, labels = _pm_one(x, y)
    _positive("l2", l2)
    check_int("max_iter", max_iter, 1)
    w, b, _ = _svm_dual(flat, labels, l2=l2, init=None, max_iter=max_iter, tol=tol)
    return w, b


def _svm_dual(
    x: Tensor, y: Tensor, *, l2: float, init: Tensor | None, max_iter: int = 5000, tol: float = 1e-9
) -> tuple[Tensor, float, Tensor]:
    """The dual solve of `train_linear_svm`, warm-started at `init` (dual variables scaled to [0, 1]).

    Returns w, b and the scaled dual variables (to warm-start a retraining on a superset of records).
    """
    n = x.shape[0]
    xa = np.concatenate([x.numpy(), np.ones((n, 1))], axis=1)
    ya = y.numpy()
    scale = 1.0 / (l2 * n)

    def f(beta: np.ndarray) -> tuple[float, np.ndarray]:
        u = xa.T @ (beta * ya)
        return 0.5 * scale * float(u @ u) - float(beta.sum()), scale * ya * (xa @ u) - 1.0

    res = optimize.minimize(
        f,
        np.zeros(n) if init is None else init.numpy(),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 1.0)] * n,
        options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-10},
    )
    theta = torch.from_numpy(scale * (xa.T @ (res.x * ya)))
    return theta[:-1].contiguous(), float(theta[-1]), torch.from_numpy(res.x)


def certify_linear_svm(
    train: Dataset | tuple[Tensor, Tensor],
    test: Dataset | tuple[Tensor, Tensor],
    eps: Sequence[float],
    *,
    l2: float = 0.01,
    steps: int = 200,
    lr: float = 1.0,
    sphere_quantile: float | None = 0.9,
    slab_quantile: float | None = 0.9,
    box: bool = True,
    solver: str = "CLARABEL",
    seed: int = 0,
    progress: bool = False,
) -> CertifiedBound:
    """Steinhardt et al.'s bound and candidate attack for a binary linear SVM, per poisoned fraction.

    `train`/`test`: a Dataset with exactly two labels present (the lower becomes -1) or (x, y) with
    y in {-1, +1}. The defence is sphere+slab around the oracle centroids (means of the clean training
    data), radii the per-class `sphere_quantile`/`slab_quantile` of the clean distances; both None means
    no defence (feasible set: the box). Descent: theta starts at the clean SVM, steps lr/sqrt(t).
    The candidate attack of eps*n points is taken evenly along the `steps` iterates (eps=0 needs no
    descent: its bound is the clean objective). The retrainings are warm-started at the clean dual.
    `seed` is recorded only: the method is deterministic.

    Steinhardt, Koh and Liang, "Certified Defenses for Data Poisoning Attacks", NeurIPS 2017.
    """
    started = time.perf_counter()
    x_tr, y_tr = _binary("train", train)
    x_te, y_te = _binary("test", test)
    if x_te.shape[1] != x_tr.shape[1]:
        raise invalid("test", tuple(x_te.shape), f"records with {x_tr.shape[1]} features like train")
    eps_list = _eps(eps)
    check_int("steps", steps, 1)
    _positive("lr", lr)
    _positive("l2", l2)
    n, dim = x_tr.shape
    defence = _oracle_defence(x_tr, y_tr, sphere_quantile, slab_quantile)
    feasible = FeasibleSet(defence, dim=dim, box=box, solver=solver)
    w0, b0, warm = _svm_dual(x_tr, y_tr, l2=l2, init=None)
    clean_error = _error(w0, b0, x_te, y_te)
    kept = torch.ones(n, dtype=torch.bool)
    if defence is not None:  # the defence removes clean outliers too: warm-start from the filtered clean SVM
        kept = defence.contains(x_tr, _index(y_tr), tol=1e-6)
        warm = _svm_dual(x_tr[kept], y_tr[kept], l2=l2, init=None)[2]
    runs = [
        _descend(x_tr, y_tr, w0, b0, e, feasible, l2=l2, steps=steps if e > 0 else 1, lr=lr) for e in eps_list
    ]
    clean_obj = torch.cat([run[0] for run in runs])
    worst = torch.cat([run[1] for run in runs])
    bounds, errors, test_losses, n_poisons, removed = [], [], [], [], []
    for e, (_, _, points, labels) in zip(eps_list, runs, strict=True):
        n_poison = round(e * n)
        pick = torch.linspace(0, len(labels) - 1, n_poison).round().long()
        x_p, y_p = points[pick], labels[pick]
        keep_p = torch.ones(n_poison, dtype=torch.bool)
        if defence is not None and n_poison:
            keep_p = defence.contains(x_p, _index(y_p), tol=1e-6)
        keep = torch.cat([kept, keep_p])
        init = torch.cat([warm, torch.zeros(int(keep_p.sum()), dtype=torch.float64)])
        x_all, y_all = torch.cat([x_tr, x_p])[keep], torch.cat([y_tr, y_p])[keep]
        w, b, _ = _svm_dual(x_all, y_all, l2=l2, init=init)
        bounds.append(float((clean_obj + e * worst).min()))
        errors.append(_error(w, b, x_te, y_te))
        test_losses.append(hinge_objective(w, b, x_te, y_te, l2=0.0))
        n_poisons.append(n_poison)
        removed.append({"clean": int((~keep[:n]).sum()), "poison": int((~keep[n:]).sum())})
        if progress:
            logger.info("eps=%.4f bound=%.4f candidate test error=%.4f", e, bounds[-1], errors[-1])
    return CertifiedBound(
        eps=eps_list,
        upper_bound=bounds,
        candidate_test_error=errors,
        clean_test_error=clean_error,
        config={
            "l2": l2,
            "steps": steps,
            "lr": lr,
            "sphere_quantile": sphere_quantile,
            "slab_quantile": slab_quantile,
            "box": box,
            "solver": solver,
            "centroids": "oracle" if defence is not None else None,
            "seed": seed,
        },
        extra={
            "n_train": n,
            "n_test": len(y_te),
            "dim": dim,
            "n_poison": n_poisons,
            "removed": removed,
            "clean_loss": hinge_objective(w0, b0, x_tr, y_tr, l2=l2),
            "candidate_test_loss": test_losses,
            "elapsed_s": time.perf_counter() - started,
        },
    )


def _descend(
    x: Tensor,
    y: Tensor,
    w0: Tensor,
    b0: float,
    eps: float,
    feasible: FeasibleSet,
    *,
    l2: float,
    steps: int,
    lr: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1: subgradient descent on U(theta) = clean objective + eps * worst feasible hinge.

    Returns, per iterate, the clean objective and the worst feasible loss (U at any eps is their
    combination, so every run's iterates bound every eps), and the attack point and label met.
    """
    n = len(y)
    w, b = w0.clone(), b0
    clean_obj = torch.empty(steps, dtype=torch.float64)
    worst = torch.empty(steps, dtype=torch.float64)
    points = torch.empty(steps, x.shape[1], dtype=torch.float64)
    labels = torch.empty(steps, dtype=torch.float64)
    for t in range(steps):
        candidates, losses = feasible.maximize(w, b)
        k = int(losses.argmax())
        points[t], labels[t], worst[t] = candidates[k], _LABELS[k], losses[k]
        clean_obj[t] = hinge_objective(w, b, x, y, l2=l2)
        coef = -(y * ((1.0 - y * (x @ w + b)) > 0)) / n
        grad_w = x.T @ coef + l2 * w
        grad_b = float(coef.sum()) + l2 * b
        if float(losses[k]) > 0:
            grad_w = grad_w - eps * labels[t] * points[t]
            grad_b -= eps * float(labels[t])
        step = lr / math.sqrt(t + 1)
        w, b = w - step * grad_w, b - step * grad_b
    return clean_obj, worst, points, labels


def _oracle_defence(x: Tensor, y: Tensor, sphere_q: float | None, slab_q: float | None) -> SphereSlab | None:
    if sphere_q is None and slab_q is None:
        return None
    labels = _index(y)
    centers = centroids(x, labels, num_classes=2, kind="oracle", clean=torch.ones(len(y), dtype=torch.bool))
    return fit_sphere_slab(x, labels, centers=centers, sphere_quantile=sphere_q, slab_quantile=slab_q)


def _index(y: Tensor) -> Tensor:
    """Labels -1/+1 -> class indices 0/1."""
    return (y > 0).long()


def _error(w: Tensor, b: float, x: Tensor, y: Tensor) -> float:
    pred = torch.where(x @ w + b >= 0, 1.0, -1.0)
    return float((pred != y).double().mean())


def _binary(param: str, data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Flattened float64 records and labels -1/+1 from a two-label Dataset or an (x, y) pair."""
    if isinstance(data, Dataset):
        present = torch.unique(data.y)
        if present.numel() != 2:
            raise invalid(
                f"{param}.y",
                present.tolist(),
                "exactly two labels present",
                "subset the dataset to two classes",
            )
        return data.x.reshape(len(data), -1).to(torch.float64), torch.where(
            data.y == present[1], 1.0, -1.0
        ).double()
    if not isinstance(data, tuple) or len(data) != 2:
        raise invalid(param, type(data).__name__, "a Dataset or an (x, y) tuple", cls=RampartsTypeError)
    return _pm_one(*data)


def _pm_one(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise invalid("x/y", (type(x).__name__, type(y).__name__), "torch tensors", cls=RampartsTypeError)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise invalid("x/y", (tuple(x.shape), tuple(y.shape)), "x [N, ...] and y [N] with N >= 1")
    labels = y.to(torch.float64)
    if not bool(((labels == 1) | (labels == -1)).all()):
        raise invalid(
            "y", torch.unique(y).tolist(), "binary labels -1/+1", "map the two classes to -1 and +1"
        )
    return x.reshape(x.shape[0], -1).to(torch.float64).cpu(), labels.cpu()


def _eps(eps: Sequence[float]) -> list[float]:
    if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence) or not eps:
        raise invalid("eps", eps, "a non-empty sequence of fractions", "e.g. eps=[0.0, 0.01, 0.03]")
    out = []
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not e >= 0.0 or not math.isfinite(e):
            raise invalid("eps", e, "fractions >= 0 (poisoned points per clean point)", "e.g. 0.03 for 3%")
        out.append(float(e))
    return out


def _positive(param: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        raise invalid(param, value, "a positive finite number")
