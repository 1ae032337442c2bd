"""The audit: a battery of checks against one model, gathered into findings, a run folder and a report.

With no model, `run_audit` trains the zoo's `small_cnn` on the embedded digits in a few seconds. The
evasion battery runs FGSM, BIM, PGD, APGD-CE and APGD-DLR (linf) over an eps grid, and C&W-L2
(minimum-norm: the distribution of the distances it needs). Accuracy under attack at eps counts a
sample as broken when the attack fooled it at this eps or at a smaller one of the grid (that example
lies inside the larger ball too), so each curve is non-increasing by construction, and samples already
broken are not attacked again (AutoAttack's rule: spend compute only on points still robust).

The run folder holds `config.json`, `metrics.json` (rewritten after every step, so an interrupted run
loses nothing already measured), `adv_examples.npz` (np.savez, no pickles), the model (safetensors +
JSON), `report.html` (one self-contained file) and `report.json`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from ramparts import zoo
from ramparts.data import Dataset, load_digits, train_test_split
from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.evasion import ATTACKS, EvasionAttack
from ramparts.oracles import Knowledge, Oracle, TorchOracle
from ramparts.report import plots
from ramparts.report.environment import collect_environment
from ramparts.report.figures import evasion_figures
from ramparts.report.html import write_html
from ramparts.report.json import write_json
from ramparts.report.summary import attack_citation, eps_label, headlines
from ramparts.threat import ThreatModel, parse_eps
from ramparts.training import TrainConfig, train

__all__ = [
    "CHECKS",
    "DEFAULT_ARCH",
    "DEFAULT_CHECKS",
    "DEFAULT_EPOCHS",
    "DEFAULT_EPS_GRID",
    "DEFAULT_REFERENCE_EPS",
    "AuditReport",
    "Check",
    "default_split",
    "resolve_checks",
    "run_audit",
    "train_default_model",
]

# Pixel levels out of 255: from half a grey level of the digits (they have 17) to where nothing survives.
DEFAULT_EPS_GRID: tuple[str, ...] = (
    "2/255",
    "4/255",
    "8/255",
    "16/255",
    "24/255",
    "32/255",
    "48/255",
    "64/255",
    "80/255",
)
DEFAULT_REFERENCE_EPS = "8/255"
DEFAULT_ARCH = "small_cnn"
DEFAULT_EPOCHS = 10
DEFAULT_N = 500
# Samples shown in the examples panel.
N_EXAMPLES = 6
# The examples panel prefers images the model was this sure of (the panda was a 57.7% panda).
CONFIDENT = 0.9


@dataclass(frozen=True)
class Check:
    """One attack of the battery: a registered attack, its hyperparameters, and the norm it runs in.

    `norm="l2"` with a minimum-norm attack (C&W) measures distances instead of an eps curve.
    """

    key: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    label: str = ""

    def __post_init__(self) -> None:
        cls = ATTACKS.get(self.attack)
        if self.norm not in cls.norms:
            raise invalid("attacks", self.key, f"an attack that supports {self.norm} (one of {cls.norms})")
        if "untargeted" not in cls.goals:
            raise invalid("attacks", self.key, "an attack with an untargeted goal for the audit")
        if not self.label:
            object.__setattr__(self, "label", self.key.upper())

    @property
    def minimizes_norm(self) -> bool:
        return bool(ATTACKS.get(self.attack).minimizes_norm)

    def build(self) -> EvasionAttack:
        return ATTACKS.get(self.attack)(**self.params)

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "attack": self.attack,
            "label": self.label,
            "norm": self.norm,
            "params": dict(self.params),
            "minimizes_norm": self.minimizes_norm,
        }


# The default battery; hyperparameters are the papers' except where noted (APGD: 50 steps, C&W:
# 50 steps x 5 binary-search rounds, which reach the same success on digits at a fraction of the cost).
CHECKS: dict[str, Check] = {
    c.key: c
    for c in (
        Check("fgsm", "fgsm", {}, "linf", "FGSM"),
        Check("bim", "bim", {}, "linf", "BIM"),
        Check("pgd", "pgd", {"steps": 40}, "linf", "PGD"),
        Check("apgd-ce", "apgd", {"loss": "ce", "steps": 50}, "linf", "APGD-CE"),
        Check("apgd-dlr", "apgd", {"loss": "dlr", "steps": 50}, "linf", "APGD-DLR"),
        Check("cw", "cw", {"steps": 50, "binary_search_steps": 5}, "l2", "C&W-L2"),
    )
}
DEFAULT_CHECKS: tuple[str, ...] = tuple(CHECKS)


def check_names() -> list[str]:
    """Every name `resolve_checks` accepts: the battery's checks and any untargeted registered attack."""
    extra = [n for n in ATTACKS.names() if n not in CHECKS and "untargeted" in ATTACKS.get(n).goals]
    return [*CHECKS, *extra]


def resolve_checks(names: Sequence[str | Check]) -> list[Check]:
    """Battery keys (`apgd-dlr`), registered attack names (`mifgsm`, linf) or ready `Check`s."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    checks: list[Check] = []
    for item in names:
        if isinstance(item, Check):
            checks.append(item)
            continue
        if not isinstance(item, str):
            raise invalid("attacks", item, "attack names or Check objects", cls=RampartsTypeError)
        name = item.strip().lower()
        if name in CHECKS:
            checks.append(CHECKS[name])
        elif name in ATTACKS and "untargeted" in ATTACKS.get(name).goals:
            cls = ATTACKS.get(name)
            checks.append(Check(name, name, {}, "l2" if cls.minimizes_norm else "linf", name.upper()))
        else:
            raise unknown("attacks", item, check_names())
    if not checks:
        raise invalid("attacks", list(names), "at least one attack", f"pick from {', '.join(check_names())}.")
    keys = [c.key for c in checks]
    if len(set(keys)) != len(keys):
        raise invalid("attacks", keys, "each attack once", "remove the repeated names.")
    return checks


def default_split(ds: Dataset | None = None, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) of the embedded digits (or `ds`): 75% / 25%, stratified, fixed by `seed`."""
    return train_test_split(ds if ds is not None else load_digits(), test_fraction=0.25, seed=seed)


def train_default_model(
    train_ds: Dataset,
    test_ds: Dataset | None = None,
    *,
    arch: str = DEFAULT_ARCH,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `arch` from the zoo on `train_ds`; returns the model (eval mode) and its description."""
    c, h, w = train_ds.input_shape
    if h != w:
        raise invalid("data", train_ds.input_shape, "square images for the zoo's architectures")
    config = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
    torch.manual_seed(seed)
    model = zoo.build(arch, **config)
    train_config = TrainConfig(epochs=epochs, lr=2e-3, batch_size=64, seed=seed)
    t0 = time.perf_counter()
    report = train(model, train_ds, config=train_config, val=test_ds, progress=progress)
    info: dict[str, Any] = {
        "arch": arch,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_here": True,
        "training": report.summary(),
        "train_seconds": time.perf_counter() - t0,
        "train_accuracy": report.train_acc[-1],
        "test_accuracy": report.val_acc[-1],
    }
    return model, info


@dataclass
class AuditReport:
    """Everything the audit measured; `to_dict()` is report.json, `arrays` go to adv_examples.npz."""

    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    clean_accuracy: float
    findings: list[dict[str, Any]]
    worst_case: list[dict[str, Any]]
    minimum_norm: dict[str, Any]
    reference: dict[str, Any]
    headlines: list[str]
    citations: dict[str, str | None]
    timings: dict[str, float]
    environment: dict[str, Any]
    gate: dict[str, Any] | None = None
    out_dir: Path | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def curve(self, check: str) -> list[tuple[float, float]]:
        """[(eps, accuracy under attack)] of one check, eps ascending (without the clean point)."""
        return [(f["eps"], f["robust_accuracy"]) for f in self.findings if f["check"] == check]

    def robust_accuracy(self, eps: float | str | None = None, check: str | None = None) -> float:
        """Accuracy under attack at `eps` (default: the reference eps): worst case, or one check's."""
        lo, hi = self.config["bounds"]
        value = self.reference["eps"] if eps is None else _parse_grid_eps(eps, (lo, hi))
        rows = self.worst_case if check is None else [f for f in self.findings if f["check"] == check]
        for row in rows:
            if math.isclose(row["eps"], value, rel_tol=1e-6, abs_tol=1e-9):
                return float(row["robust_accuracy"])
        raise invalid("eps", eps, f"an eps of the audit's grid {[r['eps'] for r in rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "ramparts-audit",
            "version": 1,
            "headlines": self.headlines,
            "gate": self.gate,
            "config": self.config,
            "model": self.model,
            "data": self.data,
            "clean_accuracy": self.clean_accuracy,
            "reference": self.reference,
            "evasion": {
                "findings": self.findings,
                "worst_case": self.worst_case,
                "minimum_norm": self.minimum_norm,
            },
            "citations": self.citations,
            "timings": self.timings,
            "environment": self.environment,
            "files": sorted({p.name for p in self.out_dir.iterdir()} | {"report.json"})
            if self.out_dir
            else [],
        }


def _parse_grid_eps(eps: float | str, bounds: tuple[float, float]) -> float:
    value = parse_eps(eps, norm="linf", bounds=bounds, pixel_scale=255.0)
    if not (math.isfinite(value) and 0 <= value <= bounds[1] - bounds[0]):
        raise invalid("eps", eps, f"a budget in [0, {bounds[1] - bounds[0]:g}] for linf", "e.g. 8/255.")
    return value


def _eps_grid(
    eps_grid: Sequence[float | str] | str, reference: float, bounds: tuple[float, float]
) -> list[float]:
    if isinstance(eps_grid, str):
        eps_grid = [e for e in eps_grid.split(",") if e.strip()]
    values = {round(_parse_grid_eps(e, bounds), 12) for e in eps_grid}
    values.add(round(reference, 12))
    values.discard(0.0)
    return sorted(values)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=False,
    ) as bar:
        yield bar


def run_audit(
    model: nn.Module | Oracle | None = None,
    train_ds: Dataset | None = None,
    test_ds: Dataset | None = None,
    *,
    eps_grid: Sequence[float | str] | str = DEFAULT_EPS_GRID,
    attacks: Sequence[str | Check] | str = DEFAULT_CHECKS,
    n: int = DEFAULT_N,
    seed: int = 0,
    reference_eps: float | str = DEFAULT_REFERENCE_EPS,
    out_dir: str | Path | None = None,
    progress: bool = False,
    model_info: Mapping[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    bounds: tuple[float, float] = (0.0, 1.0),
    fail_under: float | None = None,
) -> AuditReport:
    """Audit `model` (default: train `small_cnn` on `train_ds`, default the digits) on `n` test images.

    `eps_grid`: linf budgets (floats, '8/255', '5px' or one comma-separated string); the reference eps
    is added to it. `attacks`: keys of `CHECKS`, other registered attack names, or `Check`s.
    `out_dir`: the run folder to write (None: nothing written, figures kept in memory).
    `fail_under`: a gate; `report.gate["passed"]` says whether the worst-case accuracy under attack at
    the reference eps reached it.
    """
    t_start = time.perf_counter()
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "n" else 0):
            raise invalid(name, value, f"an integer >= {1 if name == 'n' else 0}")
    if fail_under is not None and (
        isinstance(fail_under, bool) or not isinstance(fail_under, int | float) or not 0 <= fail_under <= 1
    ):
        raise invalid("fail_under", fail_under, "an accuracy in [0, 1]", "e.g. --fail-under 0.5.")
    ref = _parse_grid_eps(reference_eps, bounds)
    if ref <= 0:
        raise invalid("reference_eps", reference_eps, "a budget > 0", "e.g. 8/255.")
    grid = _eps_grid(eps_grid, ref, bounds)
    checks = resolve_checks(attacks)
    if train_ds is None and test_ds is None:
        train_ds, test_ds = default_split(seed=0)
    if test_ds is None:
        raise invalid(
            "test_ds", None, "a held-out Dataset to attack", "pass test_ds=... (train_ds is optional)."
        )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    linf = [c for c in checks if not c.minimizes_norm]
    minimal = [c for c in checks if c.minimizes_norm]
    timings: dict[str, float] = {}
    info: dict[str, Any] = dict(model_info or {})

    with _progress(progress) as bar:
        task = bar.add_task("audit", total=len(linf) * len(grid) + len(minimal) + (model is None) + 1)
        if model is None:
            if train_ds is None:
                raise invalid(
                    "train_ds", None, "a Dataset to train the default model on", "or pass model=..."
                )
            bar.update(task, description=f"training {DEFAULT_ARCH} ({epochs} epochs)")
            t0 = time.perf_counter()
            model, info = train_default_model(train_ds, test_ds, epochs=epochs, seed=seed)
            timings["train_s"] = time.perf_counter() - t0
            bar.advance(task)
        oracle = model if isinstance(model, Oracle) else _wrap(model, test_ds)
        if oracle.knowledge < Knowledge.GRADIENT:
            raise invalid("model", type(oracle).__name__, "a model with gradients for the white-box battery")
        module = oracle.model if isinstance(oracle, TorchOracle) else None
        if module is not None:
            info.setdefault("parameters", sum(p.numel() for p in module.parameters()))
        info.setdefault("description", type(module if module is not None else oracle).__name__)
        run = _Run(oracle, test_ds, n, seed, bounds, out, lambda text: bar.update(task, description=text))
        config = run.config(checks, grid, ref)
        for check in linf:
            t0 = time.perf_counter()
            run.sweep(check, grid, on_step=lambda: bar.advance(task))
            timings[f"{check.key}_s"] = time.perf_counter() - t0
        for check in minimal:
            t0 = time.perf_counter()
            run.minimum_norm(check)
            timings[f"{check.key}_s"] = time.perf_counter() - t0
            bar.advance(task)

        bar.update(task, description="report")
        t0 = time.perf_counter()
        worst = _worst_case(run.findings, grid, run.masks, run.correct)
        reference = _reference(run.findings, worst, ref, run.clean_accuracy, bounds)
        main = next((c for c in linf if c.key == "pgd"), linf[0] if linf else None)
        report = AuditReport(
            config=config,
            model=info,
            data=_describe_data(train_ds, test_ds),
            clean_accuracy=run.clean_accuracy,
            findings=run.findings,
            worst_case=worst,
            minimum_norm=run.minimal,
            reference=reference,
            headlines=headlines(
                n=len(run.x),
                clean=run.clean_accuracy,
                reference=reference,
                worst_case=worst,
                minimum_norm=run.minimal,
                linf_labels={c.key: c.label for c in linf},
                main=main.key if main else None,
            ),
            citations={c.label: attack_citation(ATTACKS.get(c.attack)) for c in checks},
            timings=timings,
            environment=collect_environment(),
            out_dir=out,
            arrays=run.arrays,
        )
        if fail_under is not None:
            acc = reference["robust_accuracy"]
            passed = acc is not None and acc >= fail_under
            report.gate = {
                "fail_under": float(fail_under),
                "eps": ref,
                "robust_accuracy": acc,
                "passed": passed,
            }
        examples = run.examples(main) if main is not None else []
        if examples and main is not None:
            config["examples_from"] = main.label
            config["examples_min_confidence"] = CONFIDENT
        report.figures = evasion_figures(report.to_dict(), examples)
        timings["report_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        if out is not None:
            run.write_metrics()
            _savez(out / "adv_examples.npz", report.arrays)
            _save_model(model, info, report.data, bounds, out)
            write_html(report.to_dict(), report.figures, out / "report.html")
            timings["total_s"] = time.perf_counter() - t_start
            write_json(report.to_dict(), out / "report.json")
        bar.advance(task)
    return report


class _Run:
    """The state of one audit: the attacked samples, the findings so far and the arrays to save."""

    def __init__(
        self,
        oracle: Oracle,
        test_ds: Dataset,
        n: int,
        seed: int,
        bounds: tuple[float, float],
        out: Path | None,
        status: Callable[[str], None],
    ) -> None:
        self.oracle, self.seed, self.bounds, self.out, self.status = oracle, seed, bounds, out, status
        self.classes = test_ds.classes
        pick = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(seed))[
            : min(n, len(test_ds))
        ]
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
        self.arrays: dict[str, np.ndarray] = {
            "x": self.x.cpu().numpy(),
            "y": self.y.cpu().numpy(),
            "clean_pred": self.clean_pred.cpu().numpy(),
        }

    def config(self, checks: list[Check], grid: list[float], ref: float) -> dict[str, Any]:
        """The run's configuration (config.json), written before any attack runs."""
        self.arrays["eps_grid"] = np.asarray(grid)
        config = {
            "n": len(self.x),
            "seed": self.seed,
            "eps_grid": grid,
            "eps_grid_labels": [eps_label(e, bounds=self.bounds) for e in grid],
            "reference_eps": ref,
            "bounds": list(self.bounds),
            "checks": [c.summary() for c in checks],
            "threat_models": {
                c.key: ThreatModel(
                    norm=c.norm,
                    eps=_l2_cap(self.x, self._width) if c.minimizes_norm else ref,
                    bounds=self.bounds,
                ).summary()
                for c in checks
            },
            "counting": "a sample counts as broken at eps when fooled at eps or at a smaller eps of the grid",
        }
        if self.out is not None:
            write_json(config, self.out / "config.json")
        return config

    @property
    def _width(self) -> float:
        return self.bounds[1] - self.bounds[0]

    def sweep(self, check: Check, grid: list[float], on_step: Callable[[], None]) -> None:
        """One fixed-budget attack, eps ascending, on the samples no smaller eps has broken yet."""
        x, y = self.x, self.y
        broken = ~self.correct
        eps_broken = torch.full((len(x),), math.nan, device=x.device, dtype=torch.float64)
        x_adv = x.clone()
        for eps in grid:
            label = eps_label(eps, bounds=self.bounds)
            self.status(f"{check.label} eps={label}")
            alive = (~broken).nonzero()[:, 0]
            summary = None
            if len(alive):
                threat = ThreatModel(norm="linf", eps=eps, bounds=self.bounds)
                res = check.build()(self.oracle, x[alive], y[alive], threat, seed=self.seed)
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
            self.write_metrics()
            on_step()
        self.eps_broken[check.key] = eps_broken
        key = check.key.replace("-", "_")
        self.arrays[f"{key}_x_adv"] = x_adv.cpu().numpy()
        self.arrays[f"{key}_eps_broken"] = eps_broken.cpu().numpy()

    def minimum_norm(self, check: Check) -> None:
        """A minimum-norm attack (C&W-L2) on the correctly classified samples: the distances it needs."""
        self.status(f"{check.label} (minimum norm)")
        idx = self.correct.nonzero()[:, 0]
        stats: dict[str, Any] = {"label": check.label, "attack": check.attack, "norm": check.norm}
        stats.update(attacked=len(idx), success_rate=None, median_distance=None, distances=[])
        if len(idx):
            threat = ThreatModel(norm=check.norm, eps=_l2_cap(self.x, self._width), bounds=self.bounds)
            res = check.build()(self.oracle, self.x[idx], self.y[idx], threat, seed=self.seed)
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
            key = check.key.replace("-", "_")
            self.arrays.update(
                {
                    f"{key}_x_adv": res.x_adv.cpu().numpy(),
                    f"{key}_index": idx.cpu().numpy(),
                    f"{key}_distance": full,
                }
            )
        self.minimal[check.key] = stats
        self.write_metrics()

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

    def write_metrics(self) -> None:
        """metrics.json: the curves and distances so far (rewritten after each step; nothing is lost)."""
        if self.out is None:
            return
        rows = [{k: v for k, v in f.items() if k != "summary"} for f in self.findings]
        minimal = {
            k: {kk: vv for kk, vv in v.items() if kk not in ("distances", "summary")}
            for k, v in self.minimal.items()
        }
        write_json(
            {"clean_accuracy": self.clean_accuracy, "curves": rows, "minimum_norm": minimal},
            self.out / "metrics.json",
        )


def _wrap(model: Any, ds: Dataset) -> Oracle:
    if not isinstance(model, nn.Module):
        raise invalid(
            "model", type(model).__name__, "a torch nn.Module or a ramparts Oracle", cls=RampartsTypeError
        )
    try:
        return TorchOracle(model, input_shape=ds.input_shape)
    except RuntimeError as exc:
        raise invalid(
            "model",
            type(model).__name__,
            f"a model accepting the data's input shape {ds.input_shape}",
            str(exc),
        ) from exc


def _l2_cap(x: torch.Tensor, width: float = 1.0) -> float:
    """The L2 diameter of the input box: a budget that does not bind."""
    return width * math.sqrt(x[0].numel())


def _describe_data(train_ds: Dataset | None, test_ds: Dataset) -> dict[str, Any]:
    return {
        "name": test_ds.name,
        "n_train": len(train_ds) if train_ds is not None else None,
        "n_test": len(test_ds),
        "input_shape": list(test_ds.input_shape),
        "classes": list(test_ds.classes),
        "num_classes": test_ds.num_classes,
    }


def _worst_case(
    findings: list[dict[str, Any]],
    grid: list[float],
    masks: dict[str, list[torch.Tensor]],
    correct: torch.Tensor,
) -> list[dict[str, Any]]:
    """Per eps, the accuracy when every sample meets every attack: robust only if no attack fooled it."""
    rows = []
    for i, eps in enumerate(grid):
        broken = ~correct
        for per_eps in masks.values():
            broken = broken | per_eps[i]
        at = [f for f in findings if f["eps"] == eps]
        rows.append(
            {
                "eps": eps,
                "eps_label": at[0]["eps_label"] if at else str(eps),
                "robust_accuracy": float((~broken).float().mean()),
                "strongest": min(at, key=lambda f: f["robust_accuracy"])["label"] if at else None,
            }
        )
    return rows


def _reference(
    findings: list[dict[str, Any]],
    worst: list[dict[str, Any]],
    ref: float,
    clean: float,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    at = {f["check"]: f["robust_accuracy"] for f in findings if math.isclose(f["eps"], ref, abs_tol=1e-12)}
    row = next((w for w in worst if math.isclose(w["eps"], ref, abs_tol=1e-12)), None)
    return {
        "eps": ref,
        "eps_label": eps_label(ref, bounds=bounds),
        "clean_accuracy": clean,
        "robust_accuracy": row["robust_accuracy"] if row else None,
        "strongest": row["strongest"] if row else None,
        "by_check": at,
    }


def _savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez of named arrays (no object arrays, so no pickles: np.load(allow_pickle=False) reads it)."""
    save: Callable[..., None] = np.savez
    save(path, **arrays)


def _save_model(
    model: Any, info: Mapping[str, Any], data: Mapping[str, Any], bounds: tuple[float, float], out: Path
) -> None:
    """The audited model into the run folder: zoo format (safetensors + JSON) when its architecture is known."""
    module = model.model if isinstance(model, TorchOracle) else model
    if not isinstance(module, nn.Module):
        return
    if isinstance(info.get("arch"), str) and isinstance(info.get("config"), dict):
        extra = {
            "classes": data["classes"],
            "dataset": data["name"],
            "input_shape": data["input_shape"],
            "bounds": list(bounds),
        }
        zoo.save_model(module, out / "model", arch=info["arch"], config=info["config"], extra=extra)
    else:
        zoo.save_weights(module, out / "model.safetensors")
