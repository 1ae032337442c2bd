"""Issue 6, "Reproduction": shilling (push) attacks on biased matrix factorisation and their detection.

Lam & Riedl 2004 / Mobasher et al. 2007 attack models (random, average, bandwagon, segment) on the embedded
synthetic default sized like MovieLens 100K (943 users x 1682 items, ~6% density); prediction shift and
HR@10 against attack size at filler 5%, averaged over unpopular target items; detection precision/recall
of PCA-VarSelect (Mehta & Nejdl 2009, told the number of fakes) and of the profile-attribute classifier
(trained once on attacks injected on other targets with another seed). CPU, one thread by default.

    .venv/bin/python benchmarks/shilling.py                # full run -> benchmarks/shilling.json, .png
    .venv/bin/python benchmarks/shilling.py --quick        # smoke run: 2 targets, 2 sizes, small data
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ramparts.recsys import (
    SHILLING,
    ProfileClassifier,
    Ratings,
    detection_metrics,
    fit,
    pca_detect,
    prediction_shift,
    rmse,
    synthetic_ratings,
    train_test_split,
)
from ramparts.recsys.model import MatrixFactorization

HERE = Path(__file__).resolve().parent
ATTACKS = ("random", "average", "bandwagon", "segment")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", type=int, default=5, help="number of unpopular target items")
    p.add_argument("--sizes", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.10])
    p.add_argument("--filler", type=float, default=0.05)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=HERE / "shilling.json")
    p.add_argument("--png", type=Path, default=HERE / "shilling.png")
    return p.parse_args()


def segment_items(model: MatrixFactorization, ratings: Ratings, target: int, n: int = 5) -> list[int]:
    """The attacker's 'segment': the n popular items (>= median count of the top 10%) closest to the target in
    the clean model's item-factor space, standing in for 'items of the target's genre'."""
    counts = ratings.item_counts()
    popular = counts >= counts.float().quantile(0.9)
    f = torch.nn.functional.normalize(model.item_factors.detach(), dim=1)
    sim = (f @ f[target]).masked_fill(~popular, -2.0)
    sim[target] = -2.0
    return sim.topk(n).indices.tolist()


def in_segment_users(ratings: Ratings, attack: Any) -> torch.Tensor:
    """Real users who rated every segment item at least 4 (Mobasher et al.'s in-segment users), else >= 1 of them."""
    items = torch.tensor(attack.segment_items)
    liked = torch.zeros(ratings.n_users, ratings.n_items, dtype=torch.bool)
    high = ratings.ratings >= 4
    liked[ratings.users[high], ratings.items[high]] = True
    hits = liked[:, items].sum(1)
    users = torch.nonzero(hits == items.numel()).flatten()
    return users if users.numel() >= 10 else torch.nonzero(hits >= 1).flatten()


def make_attack(
    name: str, size: float, filler: float, model: MatrixFactorization, ratings: Ratings, target: int
) -> Any:
    extra: dict[str, Any] = (
        {"segment_items": segment_items(model, ratings, target)} if name == "segment" else {}
    )
    return SHILLING.get(name)(attack_size=size, filler_size=filler, **extra)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    shape = (300, 600) if args.quick else (943, 1682)
    targets_n = 2 if args.quick else args.targets
    sizes = [0.03, 0.10] if args.quick else args.sizes
    t0 = time.perf_counter()
    ratings = synthetic_ratings(n_users=shape[0], n_items=shape[1], seed=args.seed)
    train, test = train_test_split(ratings, seed=args.seed)
    split_model = fit(train, seed=args.seed)
    baseline = float((test.ratings - train.ratings.mean()).square().mean().sqrt())
    quality = {"test_rmse": rmse(split_model, test), "global_mean_rmse": baseline}
    clean = fit(ratings, seed=args.seed)
    counts = ratings.item_counts()
    gen = torch.Generator().manual_seed(args.seed)
    candidates = torch.nonzero((counts >= 5) & (counts <= 15)).flatten()
    chosen = candidates[torch.randperm(candidates.numel(), generator=gen)[: 2 * targets_n]]
    targets, train_targets = chosen[:targets_n].tolist(), chosen[targets_n:].tolist()
    # The profile classifier learns from attacks the defender injected on other targets (other seed).
    labelled = [
        make_attack(name, size, args.filler, clean, ratings, t)(
            ratings, target_item=t, seed=args.seed + 1000 + k
        )
        for k, t in enumerate(train_targets)
        for name in ATTACKS
        for size in (0.03, 0.10)
    ]
    classifier = ProfileClassifier().fit([a.ratings for a in labelled], [a.fake_mask for a in labelled])
    rows: list[dict[str, Any]] = []
    for name in ATTACKS:
        for size in sizes:
            per: list[dict[str, float]] = []
            for k, target in enumerate(targets):
                attacked = make_attack(name, size, args.filler, clean, ratings, target)(
                    ratings, target_item=target, seed=args.seed + k
                )
                poisoned = fit(attacked.ratings, seed=args.seed)
                report = prediction_shift(clean, poisoned, ratings, target)
                pca = detection_metrics(
                    pca_detect(attacked.ratings, n_flag=attacked.n_fake).flagged, attacked.fake_mask
                )
                clf = detection_metrics(classifier.detect(attacked.ratings).flagged, attacked.fake_mask)
                if name == "segment":
                    in_segment = in_segment_users(
                        ratings, make_attack(name, size, args.filler, clean, ratings, target)
                    )
                    seg = prediction_shift(clean, poisoned, ratings, target, users=in_segment)
                    segment_stats = {
                        "segment_shift": seg.prediction_shift,
                        "segment_hr_before": seg.hit_ratio_before,
                        "segment_hr_after": seg.hit_ratio_after,
                        "segment_users": seg.n_users,
                    }
                else:
                    segment_stats = {}
                per.append(
                    {
                        **segment_stats,
                        "prediction_shift": report.prediction_shift,
                        "hr_before": report.hit_ratio_before,
                        "hr_after": report.hit_ratio_after,
                        "pca_precision": pca.precision,
                        "pca_recall": pca.recall,
                        "clf_precision": clf.precision,
                        "clf_recall": clf.recall,
                    }
                )
            row: dict[str, Any] = {"attack": name, "attack_size": size, "n_fake": attacked.n_fake}
            row.update({key: sum(p[key] for p in per) / len(per) for key in per[0]})
            rows.append(row)
            segment_text = (
                f"  in-segment shift {row['segment_shift']:+.3f} HR@10 {row['segment_hr_after']:.3f}"
                if name == "segment"
                else ""
            )
            print(
                f"{name:9s} size {size:4.0%}: shift {row['prediction_shift']:+.3f}  HR@10 {row['hr_before']:.3f}"
                f" -> {row['hr_after']:.3f}  PCA P/R {row['pca_precision']:.2f}/{row['pca_recall']:.2f}"
                f"  clf P/R {row['clf_precision']:.2f}/{row['clf_recall']:.2f}{segment_text}",
                flush=True,
            )
    elapsed = time.perf_counter() - t0
    out = {
        "settings": {
            "users": shape[0],
            "items": shape[1],
            "density": ratings.density,
            "filler_size": args.filler,
            "sizes": sizes,
            "targets": targets,
            "target_counts": [int(counts[t]) for t in targets],
            "classifier_train_targets": train_targets,
            "mf": {
                "factors": 20,
                "epochs": 100,
                "lr": 0.02,
                "l2": 0.1,
                "optimizer": "adam",
                "full_batch": True,
            },
            "seed": args.seed,
            "quick": args.quick,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "mf_quality": quality,
        "classifier_weights": dict(
            zip(("rdma", "wdma", "degsim", "length_variance"), classifier.weight.tolist(), strict=True)
        )
        if classifier.weight is not None
        else {},
        "rows": rows,
        "elapsed_s": elapsed,
    }
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, sizes, args.png)
    print(
        f"MF test RMSE {quality['test_rmse']:.3f} (global mean {baseline:.3f}); {elapsed:.0f} s -> {args.json}"
    )


def plot(rows: list[dict[str, Any]], sizes: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    x = [100 * s for s in sizes]
    for name in ATTACKS:
        sel = [r for r in rows if r["attack"] == name]
        axes[0].plot(x, [r["prediction_shift"] for r in sel], marker="o", label=name)
        axes[1].plot(x, [r["hr_after"] for r in sel], marker="o", label=name)
        axes[2].plot(x, [r["pca_recall"] for r in sel], marker="o", label=name)
        axes[3].plot(x, [r["clf_recall"] for r in sel], marker="o", label=name)
    titles = (
        "prediction shift",
        "HR@10 after attack",
        "PCA-VarSelect recall (= precision)",
        "profile classifier recall",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("attack size (% of users)")
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_ylim(-0.03, 1.05)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
