"""Sphere and slab sanitisation of a training set (Steinhardt, Koh & Liang 2017, "Certified Defenses
for Data Poisoning Attacks", NeurIPS; the defences of their Section 2).

Each class y has a centroid mu_y. A record (x, y) is removed when it lies outside its class's sphere,
``||x - mu_y|| > r_y``, or outside its class's slab, ``|<x - mu_y, v_y>| > s_y``, where ``v_y`` is the
unit vector from the mean of the other classes' centroids to mu_y (for two classes: mu_y - mu_-y, the
paper's slab). Radii are per class, a quantile of the distances of the reference records (the clean
ones when the defender is an oracle, otherwise all records), or given explicitly. Images are flattened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ramparts.data import Dataset
from ramparts.defenses.detection import DetectionResult
from ramparts.errors import RampartsTypeError, invalid, unknown

__all__ = [
    "CENTROID_ESTIMATORS",
    "CENTROID_KINDS",
    "SphereSlab",
    "centroids",
    "fit_sphere_slab",
    "sphere_slab",
]

CentroidKind = Literal["oracle", "data"]
Estimator = Literal["mean", "median"]
CENTROID_KINDS: tuple[str, ...] = ("oracle", "data")
CENTROID_ESTIMATORS: tuple[str, ...] = ("mean", "median")


def centroids(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int | None = None,
    kind: CentroidKind = "data",
    clean: Tensor | None = None,
    estimator: Estimator = "median",
) -> Tensor:
    """Per-class centroids ``[C, D]`` of the flattened records.

    `kind="oracle"`: the mean of the records marked clean by the bool mask `clean` (the defender knows the
    clean distribution, the paper's oracle defence). `kind="data"`: computed from every record of the
    (possibly poisoned) set with `estimator`: "median" (coordinate-wise, robust to a minority of
    poisons) or "mean" (what the paper's data-dependent defence uses).
    """
    flat, labels = _flatten(x, y)
    if kind not in CENTROID_KINDS:
        raise unknown("kind", kind, CENTROID_KINDS)
    if estimator not in CENTROID_ESTIMATORS:
        raise unknown("estimator", estimator, CENTROID_ESTIMATORS)
    if kind == "oracle":
        if clean is None:
            raise invalid(
                "clean", None, "a bool mask of the clean records for kind='oracle'", "pass clean=~poison"
            )
        mask = _mask("clean", clean, len(labels))
        flat, labels, estimator = flat[mask], labels[mask], "mean"
    n_classes = _num_classes(labels, num_classes)
    out = flat.new_zeros(n_classes, flat.shape[1])
    for c in range(n_classes):
        members = flat[labels == c]
        if members.shape[0] == 0:
            raise invalid(
                "y", f"no records of class {c}", "at least one record per class", "pass num_classes"
            )
        out[c] = members.mean(0) if estimator == "mean" else members.median(0).values
    return out


@dataclass(frozen=True)
class SphereSlab:
    """A fitted sphere+slab feasible set: per class a centroid, a unit slab direction and two radii.

    `sphere_radii`/`slab_radii` are ``inf`` where that part of the defence is off.
    """

    centers: Tensor
    directions: Tensor
    sphere_radii: Tensor
    slab_radii: Tensor

    def distances(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Sphere distance ``||x - mu_y||`` and slab distance ``|<x - mu_y, v_y>|`` of each record."""
        flat, labels = _flatten(x, y)
        diff = flat.to(self.centers.dtype) - self.centers[labels]
        return diff.norm(dim=1), (diff * self.directions[labels]).sum(1).abs()

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        """Outlier score: the largest of distance / radius over sphere and slab (> 1 means outside)."""
        sphere, slab = self.distances(x, y)
        labels = y.reshape(-1).long()
        return torch.maximum(sphere / self.sphere_radii[labels], slab / self.slab_radii[labels])

    def contains(self, x: Tensor, y: Tensor, *, tol: float = 0.0) -> Tensor:
        """Bool mask of the records inside their class's sphere and slab (up to a relative `tol`)."""
        return self.scores(x, y) <= 1.0 + tol


def fit_sphere_slab(
    x: Tensor,
    y: Tensor,
    *,
    centers: Tensor,
    sphere_quantile: float | None = 0.9,
    slab_quantile: float | None = 0.9,
    sphere_radii: Tensor | None = None,
    slab_radii: Tensor | None = None,
    reference: Tensor | None = None,
) -> SphereSlab:
    """Fit per-class radii around `centers` [C, D]: quantiles of the `reference` records' distances.

    `reference`: bool mask of the records the quantiles are taken over (the clean ones for the oracle);
    default all. A quantile of None turns that part off unless its radii are given explicitly.
    """
    flat, labels = _flatten(x, y)
    if not isinstance(centers, Tensor) or centers.ndim != 2 or centers.shape[1] != flat.shape[1]:
        raise invalid("centroids", getattr(centers, "shape", centers), f"a tensor [C, {flat.shape[1]}]")
    n_classes = centers.shape[0]
    if int(labels.max()) >= n_classes:
        raise invalid("y", int(labels.max()), f"labels below the {n_classes} centroids")
    centers = centers.to(torch.float64)
    others = (centers.sum(0, keepdim=True) - centers) / max(n_classes - 1, 1)
    directions = centers - others if n_classes > 1 else torch.zeros_like(centers)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unbounded = torch.full((n_classes,), math.inf, dtype=torch.float64)
    fitted = SphereSlab(centers, directions, unbounded, unbounded)
    mask = (
        torch.ones_like(labels, dtype=torch.bool)
        if reference is None
        else _mask("reference", reference, len(labels))
    )
    sphere_d, slab_d = fitted.distances(flat[mask], labels[mask])
    ref_labels = labels[mask]
    return SphereSlab(
        centers,
        directions,
        _radii("sphere", sphere_radii, sphere_quantile, sphere_d, ref_labels, n_classes),
        _radii("slab", slab_radii, slab_quantile, slab_d, ref_labels, n_classes),
    )


def sphere_slab(
    data: Dataset,
    *,
    centroids: CentroidKind | Tensor = "data",
    clean: Tensor | None = None,
    estimator: Estimator = "median",
    sphere_quantile: float | None = 0.9,
    slab_quantile: float | None = 0.9,
    sphere_radii: Tensor | None = None,
    slab_radii: Tensor | None = None,
) -> DetectionResult:
    """Flag the records of `data` outside their class's sphere or slab (Steinhardt et al. 2017).

    `centroids`: "oracle" (means of the records marked by the bool mask `clean`), "data" (from every
    record with `estimator`) or a tensor [C, D]. Radii: a per-class quantile of the distances of the
    `clean` records when `clean` is given (the oracle knows them), of every record otherwise; or the
    explicit `sphere_radii`/`slab_radii` [C]. A quantile of None turns that part of the defence off.

    Steinhardt, Koh and Liang, "Certified Defenses for Data Poisoning Attacks", NeurIPS 2017.
    """
    if not isinstance(data, Dataset):
        raise invalid("data", type(data).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    if isinstance(centroids, Tensor):
        centers, kind = centroids, "given"
    else:
        kind = str(centroids)
        centers = _centroids_of(data, kind=centroids, clean=clean, estimator=estimator)
    fitted = fit_sphere_slab(
        data.x,
        data.y,
        centers=centers,
        sphere_quantile=sphere_quantile,
        slab_quantile=slab_quantile,
        sphere_radii=sphere_radii,
        slab_radii=slab_radii,
        reference=clean,
    )
    if not bool(torch.isfinite(torch.cat([fitted.sphere_radii, fitted.slab_radii])).any()):
        raise invalid(
            "sphere_quantile/slab_quantile",
            (sphere_quantile, slab_quantile),
            "at least one part on",
            "pass 0.9",
        )
    scores = fitted.scores(data.x, data.y)
    sphere_d, slab_d = fitted.distances(data.x, data.y)
    labels = data.y.long()
    return DetectionResult(
        method="sphere_slab",
        config={
            "centroids": kind,
            "estimator": estimator if kind == "data" else None,
            "sphere_quantile": sphere_quantile,
            "slab_quantile": slab_quantile,
            "radii_from": "clean" if clean is not None else "all",
        },
        flagged=(scores > 1.0).cpu(),
        scores=scores.float().cpu(),
        extra={
            "outside_sphere": int((sphere_d > fitted.sphere_radii[labels]).sum()),
            "outside_slab": int((slab_d > fitted.slab_radii[labels]).sum()),
            "sphere_radii": fitted.sphere_radii.tolist(),
            "slab_radii": fitted.slab_radii.tolist(),
        },
    )


def _centroids_of(data: Dataset, *, kind: CentroidKind, clean: Tensor | None, estimator: Estimator) -> Tensor:
    if kind not in CENTROID_KINDS:
        raise unknown("centroids", kind, CENTROID_KINDS)
    return centroids(
        data.x, data.y, num_classes=data.num_classes, kind=kind, clean=clean, estimator=estimator
    )


def _radii(
    part: str, given: Tensor | None, quantile: float | None, dist: Tensor, labels: Tensor, n_classes: int
) -> Tensor:
    """Per-class radii of one part: the given ones, a quantile of `dist` per class, or inf (off)."""
    if given is not None:
        radii = torch.as_tensor(given, dtype=torch.float64).reshape(-1)
        if radii.shape[0] != n_classes or not bool((radii > 0).all()):
            raise invalid(f"{part}_radii", given, f"{n_classes} positive radii (one per class)")
        return radii
    if quantile is None:
        return torch.full((n_classes,), math.inf, dtype=torch.float64)
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 1.0:
        raise invalid(
            f"{part}_quantile", quantile, "a number in (0, 1] or None", "e.g. 0.9 keeps 90% of clean data"
        )
    radii = torch.full((n_classes,), math.inf, dtype=torch.float64)
    for c in range(n_classes):
        members = dist[labels == c]
        if members.numel():
            radii[c] = torch.quantile(members, float(quantile)).clamp_min(1e-12)
    return radii


def _flatten(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise invalid("x/y", (type(x).__name__, type(y).__name__), "torch tensors", cls=RampartsTypeError)
    if x.ndim < 2 or y.reshape(-1).shape[0] != x.shape[0] or x.shape[0] == 0:
        raise invalid("x/y", (tuple(x.shape), tuple(y.shape)), "x [N, ...] with N >= 1 and one label per row")
    labels = y.reshape(-1).long()
    if int(labels.min()) < 0:
        raise invalid("y", int(labels.min()), "class indices >= 0", "map labels to 0..C-1")
    return x.reshape(x.shape[0], -1).to(torch.float64), labels


def _mask(param: str, mask: Tensor, n: int) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (n,):
        raise invalid(param, getattr(mask, "shape", mask), f"a bool tensor of shape ({n},)")
    if not bool(mask.any()):
        raise invalid(param, "an all-False mask", "at least one True record")
    return mask.cpu()


def _num_classes(labels: Tensor, num_classes: int | None) -> int:
    if num_classes is None:
        return int(labels.max()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= int(labels.max()):
        raise invalid("num_classes", num_classes, f"an integer > the largest label {int(labels.max())}")
    return num_classes
