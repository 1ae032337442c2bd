"""The per-check work of one audit: eps sweeps, minimum-norm distances and the examples panel.

`AuditRun` keeps what was measured so far and writes it to the run folder after every step. Given what
an earlier run of the same configuration recorded, it reuses every finished step, so a resumed audit
attacks only what is missing and ends with the same figures as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramparts.audit import blackbox
from ramparts.audit.checks import Check, l2_cap
from ramparts.audit.progress import AuditProgress
from ramparts.audit.run_folder import Recorded, write_metrics
from ramparts.data import Dataset
from ramparts.evasion.base import auto_batch_size
from ramparts.oracles import Oracle
from ramparts.report import plots
from ramparts.report.summary import eps_label
from ramparts.threat import ThreatModel

# Samples shown in the examples panel.
N_EXAMPLES = 6
# The examples panel prefers images the model was this sure of (the panda was a 57.7% panda).
CONFIDENT = 0.9
# The per-check arrays in adv_examples.npz: `<key>_<suffix>`, key with "-" as "_".
_ARRAYS = ("x_adv", "eps_broken", "index", "distance")


class AuditRun:
    """The state of one audit: the attacked samples, the findings so far and the arrays to save."""

    def __init__(
        self,
        oracle: Oracle,
        test_ds: Dataset,
        n: int,
        seed: int,
        bounds: tuple[float, float],
        grid: list[float],
        out: Path | None,
        progress: AuditProgress,
        recorded: Recorded | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> None:
        self.oracle, self.seed, self.bounds, self.out = oracle, seed, bounds, out
        self.progress = progress
        self.status = progress.status
        self.tick = progress.advance
        self.model_info = model_info
        self.classes = test_ds.classes
        pick = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(seed))[
            : min(n, len(test_ds))
        ]
        self.pick = pick
        self.x = test_ds.x[pick].to(oracle.device)
        self.y = test_ds.y[pick].to(oracle.device)
        with oracle.evaluating():
            log_probs = oracle.log_probs(self.x)
        self.clean_pred = log_probs.argmax(dim=1)
        self.clean_conf = log_probs.amax(dim=1).exp()
        self.correct = self.clean_pred == self.y
        self.clean_accuracy = float(self.correct.float().mean())
        self.findings: list[dict[str, Any]] = []
        self.masks: dict[str, list[torch.Tensor]] = {}
        self.eps_broken: dict[str, torch.Tensor] = {}
        self.minimal: dict[str, dict[str, Any]] = {}
        self.blackbox: dict[str, dict[str, Any]] = {}
        self.sections: dict[str, dict[str, Any]] = {}
        self.arrays: dict[str, np.ndarray] = {
            "x": self.x.cpu().numpy(),
            "y": self.y.cpu().numpy(),
            "clean_pred": self.clean_pred.cpu().numpy(),
            "eps_grid": np.asarray(grid),
        }
        self.recorded = recorded if recorded is not None and self._matches(recorded) else Recorded()
        self.reused = 0
        self.started: set[str] = set()
        self.batch_size = auto_batch_size(oracle.device, self.x.shape[1:])

    def _matches(self, recorded: Recorded) -> bool:
        """Whether the record was measured on these very samples with this model's clean predictions."""
        return recorded.metrics.get("clean_accuracy") == self.clean_accuracy and all(
            k in recorded.arrays and np.array_equal(recorded.arrays[k], self.arrays[k])
            for k in ("x", "y", "clean_pred")
        )

    @property
    def _width(self) -> float:
        return self.bounds[1] - self.bounds[0]

    def sweep(self, check: Check, grid: list[float], on_step: Callable[[], None]) -> None:
        """One fixed-budget attack, eps ascending, on the samples no smaller eps has broken yet."""
        self.started.add(check.key)
        x, y = self.x, self.y
        key = _prefix(check.key)
        done, eps_broken, x_adv = self._recorded_sweep(check, grid)
        broken = ~self.correct | ~torch.isnan(eps_broken)
        for i, eps in enumerate(grid):
            if i < len(done):
                self.masks.setdefault(check.key, []).append(~self.correct | (eps_broken <= eps))
                self.findings.append(done[i])
                self.reused += 1
                on_step()
                continue
            label = eps_label(eps, bounds=self.bounds)
            self.status(f"{check.label} eps={label}")
            alive = (~broken).nonzero()[:, 0]
            summary = None
            if len(alive):
                threat = ThreatModel(norm="linf", eps=eps, bounds=self.bounds)
                res = check.build()(
                    self.oracle, x[alive], y[alive], threat, seed=self.seed, batch_size=self.batch_size
                )
                won = res.success & (res.adv_pred != y[alive])
                broken[alive[won]] = True
                eps_broken[alive[won]] = eps
                x_adv[alive[won]] = res.x_adv[won]
                summary = res.summary()
            self.masks.setdefault(check.key, []).append(broken.clone())
            self.findings.append(
                {
                    "check": check.key,
                    "label": check.label,
                    "attack": check.attack,
                    "norm": "linf",
                    "eps": eps,
                    "eps_label": label,
                    "eps_pixels": eps / self._width * 255.0,
                    "robust_accuracy": float((~broken).float().mean()),
                    "attacked": len(alive),
                    "newly_broken": 0 if summary is None else round(summary["success_rate"] * len(alive)),
                    "summary": summary,
                }
            )
            self.arrays[f"{key}_x_adv"] = x_adv.cpu().numpy()
            self.arrays[f"{key}_eps_broken"] = eps_broken.cpu().numpy()
            self.write_metrics()
            on_step()
        self.eps_broken[check.key] = eps_broken
        self.arrays[f"{key}_x_adv"] = x_adv.cpu().numpy()
        self.arrays[f"{key}_eps_broken"] = eps_broken.cpu().numpy()

    def _recorded_sweep(
        self, check: Check, grid: list[float]
    ) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        """(the recorded findings of `check`'s first eps, eps_broken, x_adv) to continue its sweep from.

        The arrays may be one step ahead of metrics.json (written first): samples broken at an eps
        past the recorded ones are rolled back (they were attacked from the clean image, so x_adv = x).
        """
        x = self.x
        eps_broken = torch.full((len(x),), math.nan, device=x.device, dtype=torch.float64)
        fresh: tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor] = ([], eps_broken, x.clone())
        key = _prefix(check.key)
        rows = [r for r in self.recorded.metrics.get("curves", []) if r.get("check") == check.key]
        arrays = self.recorded.arrays
        if not rows or [r.get("eps") for r in rows] != grid[: len(rows)]:
            return fresh
        if f"{key}_eps_broken" not in arrays or f"{key}_x_adv" not in arrays:
            return fresh
        eps_broken = torch.as_tensor(arrays[f"{key}_eps_broken"], dtype=torch.float64).to(x.device)
        x_adv = torch.as_tensor(arrays[f"{key}_x_adv"]).to(x.device)
        if eps_broken.shape != (len(x),) or x_adv.shape != x.shape or x_adv.dtype != x.dtype:
            return fresh
        ahead = eps_broken > rows[-1]["eps"]
        eps_broken[ahead] = math.nan
        x_adv[ahead] = x[ahead]
        robust = float((self.correct & torch.isnan(eps_broken)).float().mean())
        if robust != rows[-1]["robust_accuracy"]:  # arrays of another run: measure again
            return fresh
        return rows, eps_broken, x_adv

    def minimum_norm(self, check: Check) -> None:
        """A minimum-norm attack (C&W-L2) on the correctly classified samples: the distances it needs."""
        self.started.add(check.key)
        if self._reuse_minimum_norm(check):
            return
        self.status(f"{check.label} (minimum norm)")
        idx = self.correct.nonzero()[:, 0]
        stats: dict[str, Any] = {"label": check.label, "attack": check.attack, "norm": check.norm}
        stats.update(attacked=len(idx), success_rate=None, median_distance=None, distances=[])
        if len(idx):
            threat = ThreatModel(
                norm=check.norm, eps=l2_cap(self.x[0].numel(), self._width), bounds=self.bounds
            )
            res = check.build()(
                self.oracle, self.x[idx], self.y[idx], threat, seed=self.seed, batch_size=self.batch_size
            )
            dist = res.distance[res.success].cpu().numpy().astype(np.float64)
            median = float(np.median(dist)) if dist.size else None
            stats.update(
                threat=threat.summary(),
                success_rate=res.success_rate,
                median_distance=median,
                mean_distance=float(dist.mean()) if dist.size else None,
                quartiles=[float(q) for q in np.quantile(dist, [0.25, 0.5, 0.75])] if dist.size else None,
                median_rms_pixels=None
                if median is None
                else median / math.sqrt(self.x[0].numel()) / self._width * 255,
                distances=dist.tolist(),
                summary=res.summary(),
            )
            full = np.full(len(self.x), np.nan)
            full[idx.cpu().numpy()[res.success.cpu().numpy()]] = dist
            key = _prefix(check.key)
            self.arrays.update(
                {
                    f"{key}_x_adv": res.x_adv.cpu().numpy(),
                    f"{key}_index": idx.cpu().numpy(),
                    f"{key}_distance": full,
                }
            )
        self.minimal[check.key] = stats
        self.write_metrics()

    def _reuse_minimum_norm(self, check: Check) -> bool:
        """Take `check`'s distances and arrays from the record, when it holds them."""
        stats = self.recorded.metrics.get("minimum_norm", {}).get(check.key)
        key = _prefix(check.key)
        names = [f"{key}_x_adv", f"{key}_index", f"{key}_distance"]
        if not isinstance(stats, dict) or "distances" not in stats:
            return False
        if stats.get("attacked") and not all(n in self.recorded.arrays for n in names):
            return False
        if stats.get("attacked"):
            self.arrays.update({n: self.recorded.arrays[n] for n in names})
        self.minimal[check.key] = stats
        self.reused += 1
        return True

    def examples(self, check: Check) -> list[plots.Example]:
        """Up to N_EXAMPLES images classified with confidence >= CONFIDENT that `check` fooled at the
        smallest eps, one per class.

        Each is attacked again at that eps without early stopping, so the panel shows the confident
        mistake the attack reaches within the budget (the curves count the first success; both are
        valid adversarial examples at that eps).
        """
        eps_broken = self.eps_broken[check.key]
        done = (~torch.isnan(eps_broken)).nonzero()[:, 0]
        if bool((self.clean_conf[done] >= CONFIDENT).any()):
            done = done[self.clean_conf[done] >= CONFIDENT]
        chosen: list[int] = []
        for j in torch.argsort(eps_broken[done], stable=True).tolist():
            if int(self.y[done[j]]) not in {int(self.y[i]) for i in chosen}:
                chosen.append(int(done[j]))
            if len(chosen) == N_EXAMPLES:
                break
        if not chosen:
            return []
        chosen.sort(key=lambda i: (float(eps_broken[i]), int(self.y[i])))
        idx = torch.as_tensor(chosen, device=self.x.device)
        x, y, x_adv = self.x[idx], self.y[idx], self.x[idx].clone()
        for eps in sorted({float(eps_broken[i]) for i in chosen}):
            rows = torch.as_tensor([float(eps_broken[i]) == eps for i in chosen], device=x.device)
            threat = ThreatModel(norm="linf", eps=eps, bounds=self.bounds)
            res = check.build()(self.oracle, x[rows], y[rows], threat, seed=self.seed, early_stop=False)
            x_adv[rows] = res.x_adv
        with self.oracle.evaluating():
            p_adv = self.oracle.log_probs(x_adv).exp()
        self.arrays["examples_index"] = idx.cpu().numpy()
        self.arrays["examples_x_adv"] = x_adv.cpu().numpy()
        return [
            plots.Example(
                original=x[row].cpu().numpy(),
                adversarial=x_adv[row].cpu().numpy(),
                true_class=self.classes[int(y[row])],
                clean_class=self.classes[int(self.clean_pred[i])],
                clean_confidence=float(self.clean_conf[i]),
                adv_class=self.classes[int(p_adv[row].argmax())],
                adv_confidence=float(p_adv[row].max()),
                caption=f"{check.label} eps={eps_label(float(eps_broken[i]), bounds=self.bounds)}",
            )
            for row, i in enumerate(chosen)
        ]

    def one_step(
        self, key: str, config: dict[str, Any], measure: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """A section measured in one step (theft, membership): reused from metrics.json when it was recorded
        with this `config`, else measured and recorded under `key` with its config."""
        self.started.add(key)
        recorded = self.recorded.metrics.get(key)
        if isinstance(recorded, dict) and recorded.get("config") == config and "result" in recorded:
            self.sections[key] = recorded
            self.reused += 1
            return recorded
        section = {"config": config, **measure()}
        self.sections[key] = section
        self.write_metrics()
        return section

    def write_metrics(self) -> None:
        """metrics.json (the curves, distances and model so far) and adv_examples.npz (the arrays so far),
        rewritten after each step: nothing measured is lost, and a resumed run reuses it.

        What the record holds for checks this run has not reached yet is carried over as it is.
        """
        if self.out is None:
            return
        metrics = self.recorded.metrics
        pending = {
            r.get("check") for r in metrics.get("curves", []) if r.get("check") not in self.started
        } | {k for k in metrics.get("minimum_norm", {}) if k not in self.started}
        names = {f"{_prefix(str(k))}_{suffix}" for k in pending for suffix in _ARRAYS}
        recorded_bb = metrics.get("blackbox", {}) if isinstance(metrics.get("blackbox"), dict) else {}
        pending_bb = {k for k in recorded_bb if blackbox.started_key(k) not in self.started}
        names |= {f"{blackbox.array_prefix(k)}_{suffix}" for k in pending_bb for suffix in blackbox.ARRAYS}
        record = {
            "clean_accuracy": self.clean_accuracy,
            "model": self.model_info,
            "curves": [
                *self.findings,
                *(r for r in metrics.get("curves", []) if r.get("check") in pending),
            ],
            "minimum_norm": {
                **{k: v for k, v in metrics.get("minimum_norm", {}).items() if k in pending},
                **self.minimal,
            },
            "blackbox": {**{k: v for k, v in recorded_bb.items() if k in pending_bb}, **self.blackbox},
            **{k: self.sections.get(k) if k in self.started else metrics.get(k) for k in ONE_STEP},
        }
        arrays = {**{k: v for k, v in self.recorded.arrays.items() if k in names}, **self.arrays}
        write_metrics(self.out, record, arrays)


ONE_STEP: tuple[str, ...] = ("theft", "membership", "poisoning", "encryption")


def _prefix(key: str) -> str:
    """The name of a check's arrays in adv_examples.npz: `<prefix>_x_adv`, ... (`apgd-ce` -> `apgd_ce`)."""
    return key.replace("-", "_")
