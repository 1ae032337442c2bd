"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no global state) as PNG bytes.

- `robustness_curve`: robust accuracy against eps, one line per attack, clean accuracy at eps = 0,
  the x axis labelled both in input units and in pixel levels (/255);
- `examples_panel`: original | amplified perturbation | adversarial, in the style of the
  "panda -> gibbon" picture of Goodfellow et al.;
- `distance_histogram`: the distances of minimum-norm attacks (C&W-L2).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

DPI = 110
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp or software metadata, so identical inputs give identical bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """`data:image/png;base64,...`, for an <img src> that needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def robustness_curve(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    clean_accuracy: float,
    reference_eps: float | None = None,
    worst_case: Sequence[tuple[float, float]] | None = None,
    bounds_width: float = 1.0,
    pixel_scale: float = 255.0,
    norm: str = "linf",
) -> bytes:
    """Robust accuracy (%) against eps; each curve is [(eps, accuracy)], the clean point (0, clean) is added."""
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        xs, ys = _with_clean(points, clean_accuracy)
        ax.plot(xs, ys, marker="o", markersize=4, lw=1.6, color=_COLORS[i % len(_COLORS)], label=label)
    if worst_case:
        xs, ys = _with_clean(worst_case, clean_accuracy)
        ax.plot(xs, ys, ls="--", color="black", lw=1.4, label="worst case (any attack)")
    if reference_eps is not None:
        ax.axvline(reference_eps, color="grey", ls=":", lw=1)
    ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_xlabel(f"eps ({norm}, input units; bounds width {bounds_width:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    scale = pixel_scale / bounds_width

    def to_levels(eps: ArrayLike) -> ArrayLike:
        return np.asarray(eps, dtype=np.float64) * scale

    def to_eps(levels: ArrayLike) -> ArrayLike:
        return np.asarray(levels, dtype=np.float64) / scale

    top = ax.secondary_xaxis("top", functions=(to_levels, to_eps))
    top.set_xlabel(f"eps in pixel levels (/{pixel_scale:g})")
    ax.set_title(f"Clean accuracy {100 * clean_accuracy:.1f}% at eps = 0", fontsize=9, loc="left")
    fig.tight_layout()
    return to_png(fig)


def _with_clean(points: Sequence[tuple[float, float]], clean: float) -> tuple[list[float], list[float]]:
    pts = sorted((float(e), float(a)) for e, a in points if e > 0)
    return [0.0] + [e for e, _ in pts], [100 * clean] + [100 * a for _, a in pts]


@dataclass(frozen=True)
class Example:
    """One row of the examples panel; images are C x H x W arrays in `bounds`."""

    original: np.ndarray
    adversarial: np.ndarray
    true_class: str
    clean_class: str
    clean_confidence: float
    adv_class: str
    adv_confidence: float
    caption: str = ""


def examples_panel(
    examples: Sequence[Example], *, bounds: tuple[float, float] = (0.0, 1.0), title: str = ""
) -> bytes:
    """Rows of original + perturbation (rescaled to fill [0, 1], factor shown) = adversarial."""
    rows = max(1, len(examples))
    fig = Figure(figsize=(7.2, 2.1 * rows + (0.5 if title else 0.1)))
    grid = fig.add_gridspec(rows, 5, width_ratios=(1, 0.22, 1, 0.22, 1))
    lo, hi = bounds
    for r, ex in enumerate(examples):
        delta = (ex.adversarial - ex.original) / (hi - lo)
        peak = float(np.abs(delta).max())
        factor = 0.5 / peak if peak > 0 else 1.0
        amplified = np.clip(0.5 + factor * delta, 0.0, 1.0)
        panels = (
            (
                0,
                _display(ex.original, lo, hi),
                f"{ex.clean_class}: {100 * ex.clean_confidence:.1f}%",
                "black",
            ),
            (2, _display(amplified, 0.0, 1.0), f"perturbation x{factor:.1f}", "#555555"),
            (
                4,
                _display(ex.adversarial, lo, hi),
                f"{ex.adv_class}: {100 * ex.adv_confidence:.1f}%",
                "#b00020",
            ),
        )
        for col, img, label, color in panels:
            ax = fig.add_subplot(grid[r, col])
            _show(ax, img)
            ax.set_title(label, fontsize=9, color=color)
            if col == 0 and ex.caption:
                ax.set_ylabel(ex.caption, fontsize=8)
        for col, sign in ((1, "+"), (3, "=")):
            ax = fig.add_subplot(grid[r, col])
            ax.axis("off")
            ax.text(0.5, 0.5, sign, fontsize=20, ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def _display(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """C x H x W in [lo, hi] -> H x W (grey) or H x W x 3 in [0, 1]."""
    arr = (np.asarray(img, dtype=np.float32) - lo) / (hi - lo)
    arr = np.clip(arr, 0.0, 1.0)
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0]
    if arr.ndim == 3:
        return np.transpose(arr[:3], (1, 2, 0))
    return arr


def _show(ax: object, img: np.ndarray) -> None:
    kwargs = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if img.ndim == 2 else {}
    ax.imshow(img, interpolation="nearest", **kwargs)  # type: ignore[attr-defined]
    ax.set_xticks([])  # type: ignore[attr-defined]
    ax.set_yticks([])  # type: ignore[attr-defined]


def distance_histogram(distances: Sequence[float], *, median: float | None, label: str = "C&W-L2") -> bytes:
    """Histogram of the perturbation sizes of successful minimum-norm adversarial examples."""
    fig = Figure(figsize=(7.0, 3.2))
    ax = fig.add_subplot()
    values = np.asarray(distances, dtype=np.float64)
    if values.size:
        ax.hist(values, bins=min(30, max(5, values.size // 5)), color="#4c72b0", alpha=0.85)
    if median is not None:
        ax.axvline(median, color="#b00020", ls="--", lw=1.4, label=f"median {median:.3g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"L2 distance of successful {label} adversarial examples")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def success_vs_queries(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    references: Mapping[str, tuple[str, float]] | None = None,
) -> bytes:
    """Success rate (%) against the query budget per image (log x), one line per black-box attack.

    `references`: attack label -> (what, success rate) of the white-box battery on the same images and
    threat, drawn as a dotted line of the attack's colour.
    """
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = sorted((float(b), float(s)) for b, s in points)
        ax.plot(
            [b for b, _ in pts],
            [100 * s for _, s in pts],
            marker="o",
            markersize=4,
            lw=1.6,
            color=color,
            label=label,
        )
        ref = (references or {}).get(label)
        if ref is not None:
            ax.axhline(100 * ref[1], color=color, ls=":", lw=1.3, label=f"{ref[0]}: {100 * ref[1]:.1f}%")
    ax.set_xscale("log")
    budgets = sorted({float(b) for points in curves.values() for b, _ in points})
    if budgets:
        ax.set_xticks(budgets, [f"{b:,.0f}" for b in budgets])
        ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("query budget per image (log scale)")
    ax.set_ylabel("images fooled (% of those attacked)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_png(fig)


def fidelity_vs_queries(
    curve: Sequence[tuple[float, float]], *, accuracy: float | None = None, label: str = "substitute"
) -> bytes:
    """The stolen copy's fidelity (%, agreement with the model) against the labels the attacker used."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot()
    pts = sorted((float(q), float(f)) for q, f in curve)
    ax.plot(
        [q for q, _ in pts],
        [100 * f for _, f in pts],
        marker="o",
        markersize=4,
        lw=1.6,
        color=_COLORS[0],
        label=f"{label}: fidelity",
    )
    if accuracy is not None and pts:
        ax.plot(
            [pts[-1][0]],
            [100 * accuracy],
            marker="s",
            ls="none",
            color=_COLORS[1 % len(_COLORS)],
            label=f"final accuracy {100 * accuracy:.1f}%",
        )
    if pts:
        ax.set_xscale("log", base=2)
        ax.set_xticks([q for q, _ in pts], [f"{q:,.0f}" for q, _ in pts])
        ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("labels queried (log scale)")
    ax.set_ylabel("agreement with the model (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return to_png(fig)


def roc_loglog(curves: Mapping[str, Sequence[Sequence[float]]], *, title: str | None = None) -> bytes:
    """Membership ROC curves on log-log axes (Carlini et al. 2022): what matters is the low-FPR corner."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    floor = 1e-5
    for i, (label, points) in enumerate(curves.items()):
        pts = np.asarray(points, dtype=float)
        if pts.size == 0:
            continue
        ax.plot(
            np.clip(pts[:, 0], floor, 1),
            np.clip(pts[:, 1], floor, 1),
            lw=1.6,
            color=_COLORS[i % len(_COLORS)],
            label=label,
        )
    ax.plot([floor, 1], [floor, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return to_png(fig)


def privacy_tradeoff(
    rows: Sequence[Mapping[str, Any]], *, baseline: Mapping[str, float] | None = None, fpr: float = 0.001
) -> bytes:
    """LiRA's TPR at `fpr` (left axis) and the target's test accuracy (right) against DP-SGD's epsilon."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    eps = [float(r["epsilon"]) for r in rows]
    for i, mode in enumerate(("online", "offline")):
        pts = [
            (e, 100 * float(r[mode]["tpr"]))
            for e, r in zip(eps, rows, strict=True)
            if r[mode]["tpr"] is not None
        ]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            lw=1.6,
            color=_COLORS[i],
            label=f"LiRA {mode}: TPR @ {fpr:g} FPR",
        )
        if baseline is not None and mode in baseline:
            ax.axhline(100 * baseline[mode], ls="--", lw=1, color=_COLORS[i], label=f"{mode}, no DP")
    ax.axhline(100 * fpr, ls=":", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.set_xlabel("DP-SGD epsilon (log scale)")
    ax.set_ylabel("true-positive rate (%)")
    acc = ax.twinx()
    acc.plot(
        eps,
        [100 * float(r["test_accuracy"]) for r in rows],
        marker="s",
        color=_COLORS[2],
        lw=1.2,
        label="test accuracy",
    )
    acc.set_ylabel("target test accuracy (%)")
    lines = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return to_png(fig)


def poisoning_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], *, baseline: float | None = None
) -> bytes:
    """Clean accuracy (solid) and, for backdoors and targeted attacks, attack success (dashed) against
    the poisoned fraction of the training set, one colour per attack; `baseline`: the clean pipeline."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = sorted(points, key=lambda p: float(p["fraction"]))
        xs = [100 * float(p["fraction"]) for p in pts]
        ax.plot(
            xs,
            [100 * float(p["clean_accuracy"]) for p in pts],
            marker="o",
            ms=4,
            lw=1.6,
            color=color,
            label=f"{label}: clean accuracy",
        )
        success = [(x, p.get("attack_success")) for x, p in zip(xs, pts, strict=True)]
        if any(s is not None for _, s in success):
            ax.plot(
                [x for x, s in success if s is not None],
                [100 * float(s) for _, s in success if s is not None],
                marker="^",
                ms=4,
                lw=1.4,
                ls="--",
                color=color,
                label=f"{label}: attack success",
            )
    if baseline is not None:
        ax.axhline(100 * baseline, color="0.5", lw=1, ls=":", label=f"clean pipeline {100 * baseline:.1f}%")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("poisoned share of the training set (%)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return to_png(fig)


def certified_accuracy_plot(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str | None = None,
    norm: str = "L2",
) -> bytes:
    """Certified accuracy (%) against the radius, one line per smoothed model: each curve is [(r, accuracy)]
    with accuracy in [0, 1], drawn as a conservative step plot (each grid point's accuracy back to the previous
    radius: certified accuracy only falls as the radius grows)."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        pts = sorted((float(r), float(a)) for r, a in points)
        ax.step(
            [r for r, _ in pts],
            [100 * a for _, a in pts],
            where="pre",
            lw=1.6,
            color=_COLORS[i % len(_COLORS)],
            label=label,
        )
    ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"{norm} radius (input units)")
    ax.set_ylabel("certified accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    return to_png(fig)
