"""The audit's defence section: a defended model judged by the adaptive attack that fits it.

Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses to
Adversarial Examples", ICML 2018: a defence is reported with the attack that fits it, not with the
classifier's numbers nor with attacks that ignore it. When the audited model is a
`ramparts.defenses.base.DefendedModel`, this section describes the defence (transforms and detectors, their
configuration, thresholds and flags), measures its clean cost (the classifier alone against the whole defence,
and the share of clean inputs the detectors reject), then attacks the audited images at the reference eps
twice: PGD crafted on the bare classifier (non-adaptive: the examples an attacker unaware of the defence
sends) and `adaptive_pgd` through the whole defence (BPDA around non-differentiable transforms, EOT over a
randomised one, the detector term of Carlini & Wagner 2017 when there are detectors). Robust means rightly
classified or rejected. The section's headline counts an image as robust only if neither attack fooled it
(the adaptive attacker may also send the transferred examples), so it is never above either attack's number.

The section is one step of the run, recorded in its own file `defense.json` of the run folder (its
configuration, a digest of the audited images, the measurements) after the adversarial inputs went into
adv_examples.npz; a resumed run with the same configuration and images reuses it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ramparts.audit.masking import DEFENSE_GAP
from ramparts.audit.model import tensor_digest
from ramparts.defenses.adaptive import adaptive_pgd, defense_outcome
from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.errors import check_int, invalid
from ramparts.evasion import ATTACKS
from ramparts.oracles import Oracle, TorchOracle
from ramparts.report.json import to_jsonable, write_json
from ramparts.report.summary import attack_citation, eps_label
from ramparts.threat import ThreatModel

if TYPE_CHECKING:
    from ramparts.audit.runner import AuditRun

logger = logging.getLogger(__name__)

SECTION_FILE = "defense.json"
SECTION_VERSION = 1
# PGD steps of both attacks (the adaptive one is the harden command's: at least 50 steps, detector weight 10).
DEFAULT_STEPS = 50
# Progress steps of the section: clean cost, PGD on the classifier, adaptive PGD.
STEPS = 3
DEFAULT_EOT_SAMPLES = 8
DEFAULT_VOTES = 5
DETECTOR_WEIGHT = 10.0
ARRAYS = ("defense_transfer_x_adv", "defense_adaptive_x_adv")
ADAPTIVE_LABEL = "Adaptive PGD (BPDA/EOT, detector term)"


def defended_model(model: Any, oracle: Oracle | None) -> DefendedModel | None:
    """The `DefendedModel` under audit (given directly or inside a TorchOracle), else None.

    A normalising TorchOracle around a defended model is refused: the adaptive attack works in the defended
    model's own input domain, so the normalisation belongs inside its classifier."""
    if isinstance(model, DefendedModel):
        return model
    if isinstance(oracle, TorchOracle) and isinstance(oracle.model, DefendedModel):
        if oracle._mean is not None or oracle._std is not None:
            raise invalid(
                "model",
                "TorchOracle(DefendedModel, mean=..., std=...)",
                "a DefendedModel that takes the data's own inputs",
                "put the normalisation inside the DefendedModel's classifier and pass the DefendedModel.",
            )
        return oracle.model
    return None


def _settings(module: nn.Module) -> dict[str, Any]:
    """The public scalar attributes of a module (its configuration: bits, size, sigma, temperature, ...)."""
    return {
        k: v
        for k, v in sorted(vars(module).items())
        if not k.startswith("_")
        and k not in ("training", "threshold")
        and isinstance(v, bool | int | float | str)
    }


def _text(module: nn.Module) -> str:
    """`Name(setting=value, ..., held=[Transform(...), ...])`: one line for the report's table."""
    args = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in _settings(module).items()]
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList):
            args.append(f"{name}=[{', '.join(_text(m) for m in child)}]")
        else:
            args.append(f"{name}={type(child).__name__}")
    return f"{type(module).__name__}({', '.join(args)})"


def _part(module: nn.Module) -> dict[str, Any]:
    """One transform or detector: class, settings, and the transforms or modules it holds."""
    row: dict[str, Any] = {
        "name": type(module).__name__,
        "settings": _settings(module),
        "text": _text(module),
    }
    if isinstance(module, Transform):
        row.update(differentiable=bool(module.differentiable), randomized=bool(module.randomized))
    if isinstance(module, Detector):
        row["threshold"] = module.threshold
    inner = {
        name: [_part(m) for m in child] if isinstance(child, nn.ModuleList) else type(child).__name__
        for name, child in module.named_children()
    }
    if inner:
        row["holds"] = inner
    return row


def describe_defense(defended: DefendedModel) -> dict[str, Any]:
    """What the defence is: the classifier, each transform and detector with its configuration, the flags."""
    return {
        "classifier": type(defended.classifier).__name__,
        "transforms": [_part(t) for t in defended.transforms],
        "detectors": [_part(d) for d in defended.detectors],
        "differentiable": defended.differentiable,
        "randomized": defended.randomized,
    }


def reseed_defense(defended: DefendedModel, seed: int) -> list[str]:
    """Restart the draws of every randomised transform from `seed` (so the audit repeats); returns the names
    of random transforms that cannot be reseeded (their numbers will not repeat exactly)."""
    stuck = []
    for t in defended.transforms:
        if not cast(Transform, t).randomized:
            continue
        reseed = getattr(t, "reseed", None)
        if callable(reseed):
            reseed(seed)
        else:
            stuck.append(type(t).__name__)
    return stuck


def _held_transforms(defended: DefendedModel) -> list[Transform]:
    """The non-differentiable transforms inside the detectors (feature squeezing's squeezers), which
    `adaptive_pgd` differentiates through BPDA (`Detector.attack_view`)."""
    return [
        m
        for d in defended.detectors
        for m in d.modules()
        if isinstance(m, Transform) and not m.differentiable
    ]


def defense_config(
    defended: DefendedModel,
    *,
    ref: float,
    steps: int,
    eot_samples: int,
    votes: int,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    """config.json's `defense`: the two attacks and how a random defence is judged (the defence itself is
    in the identity)."""
    check_int("defense_steps", steps, 1)
    check_int("defense_eot_samples", eot_samples, 1)
    check_int("defense_votes", votes, 1)
    randomized = defended.randomized
    return {
        "version": SECTION_VERSION,
        "eps": ref,
        "eps_label": eps_label(ref, bounds=bounds),
        "transfer": {"attack": "pgd", "steps": steps, "crafted_on": "classifier"},
        "adaptive": {
            "attack": "adaptive_pgd",
            "steps": steps,
            "bpda": [type(t).__name__ for t in defended.transforms if not cast(Transform, t).differentiable],
            "bpda_in_detectors": [type(t).__name__ for t in _held_transforms(defended)],
            "eot_samples": eot_samples if randomized else 1,
            "detector_weight": DETECTOR_WEIGHT if len(defended.detectors) else 0.0,
            "restarts": 1,
        },
        "votes": votes if randomized else 1,
        "warn_gap": DEFENSE_GAP,
    }


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def defense_section(run: AuditRun, defended: DefendedModel, config: dict[str, Any]) -> dict[str, Any]:
    """Run (or reuse from the run folder) the defence section; the dict of report.json's `defense`."""
    samples = tensor_digest(run.x, run.y)
    recorded = _recorded(run, config, samples)
    if recorded is not None:
        run.reused += 1
        run.arrays.update({k: run.recorded.arrays[k] for k in ARRAYS})
        return recorded
    with _evaluating(defended):
        section, arrays = _measure(run, defended, config)
    section = {"config": config, "samples_sha256": samples, **section}
    run.arrays.update(arrays)
    if run.out is not None:
        run.write_metrics()  # the arrays reach adv_examples.npz before defense.json cites them
        write_json(section, run.out / SECTION_FILE)
    return cast(dict[str, Any], to_jsonable(section))


def _recorded(run: AuditRun, config: Mapping[str, Any], samples: str) -> dict[str, Any] | None:
    """defense.json of an earlier run of this configuration on these images, with its arrays; else None."""
    if run.out is None or not all(k in run.recorded.arrays for k in ARRAYS):
        return None
    try:
        section = json.loads((run.out / SECTION_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if (
        not isinstance(section, dict)
        or section.get("config") != to_jsonable(config)
        or section.get("samples_sha256") != samples
    ):
        return None
    return section


def _rate(mask: Tensor, among: Tensor) -> float | None:
    """Share of `mask` among the inputs `among` (None when there are none)."""
    return float(mask[among].float().mean()) if bool(among.any()) else None


def _measure(
    run: AuditRun, defended: DefendedModel, config: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    x, y = run.x, run.y
    eps, votes = float(config["eps"]), int(config["votes"])
    adaptive_cfg = config["adaptive"]
    stuck = reseed_defense(defended, run.seed)
    run.status("clean cost")
    with torch.no_grad():
        bare_correct = defended.classifier(x).argmax(dim=1) == y
        fooled0, rejected0, correct0 = defense_outcome(defended, x, y, votes=votes)
        forward_agree = None
        if defended.randomized:
            forward_agree = float((defended(x).argmax(dim=1) == defended(x).argmax(dim=1)).float().mean())
    clean: dict[str, Any] = {
        "classifier_accuracy": float(bare_correct.float().mean()),
        "defended_accuracy": float(correct0.float().mean()),
        "rejected": float(rejected0.float().mean()),
        "rejected_correct": _rate(rejected0, bare_correct),
        "robust_accuracy": 1.0 - float(fooled0.float().mean()),
        "draw_agreement": forward_agree,
    }
    run.tick()

    run.status(f"PGD on the classifier, eps={config['eps_label']}")
    reseed_defense(defended, run.seed)
    oracle = TorchOracle(defended.classifier, input_shape=tuple(x.shape[1:]))
    threat = ThreatModel(norm="linf", eps=eps, bounds=run.bounds)
    attack: Any = ATTACKS.get("pgd")
    pgd = attack(steps=config["transfer"]["steps"])(oracle, x, y, threat, seed=run.seed)
    fooled1, rejected1, _ = defense_outcome(defended, pgd.x_adv, y, votes=votes)
    bare_fooled = bare_correct & pgd.success & (pgd.adv_pred != y)
    transfer: dict[str, Any] = {
        "classifier_robust_accuracy": 1.0 - float((~bare_correct | bare_fooled).float().mean()),
        "detection_rate": _rate(rejected1, bare_fooled),
        "rejected": float(rejected1.float().mean()),
        "robust_accuracy": 1.0 - float(fooled1.float().mean()),
    }
    run.tick()

    run.status(f"adaptive PGD, eps={config['eps_label']}")
    reseed_defense(defended, run.seed)
    res = adaptive_pgd(
        defended,
        x,
        y,
        eps=eps,
        steps=adaptive_cfg["steps"],
        eot_samples=adaptive_cfg["eot_samples"],
        detector_weight=adaptive_cfg["detector_weight"],
        restarts=adaptive_cfg["restarts"],
        votes=votes,
        bounds=run.bounds,
        seed=run.seed,
    )
    adaptive = res.summary()
    run.tick()
    either = fooled1 | res.fooled
    robust = 1.0 - float(either.float().mean())
    section = {
        "version": SECTION_VERSION,
        "label": "Defence under adaptive attack",
        "defense": describe_defense(defended),
        "n": len(x),
        "eps": eps,
        "eps_label": config["eps_label"],
        "clean": clean,
        "transfer": transfer,
        "adaptive": adaptive,
        "robust_accuracy": robust,
        "gap": transfer["robust_accuracy"] - robust,
        "not_reseeded": stuck,
        "evasion_note": evasion_note(defended, clean["draw_agreement"]),
    }
    section["conclusion"] = conclusion(section)
    arrays = {ARRAYS[0]: pgd.x_adv.cpu().numpy(), ARRAYS[1]: res.x_adv.cpu().numpy()}
    logger.info(
        "defence: robust %.3f (transferred PGD %.3f, adaptive %.3f)",
        robust,
        transfer["robust_accuracy"],
        adaptive["robust_accuracy"],
    )
    return section, arrays


def evasion_note(defended: DefendedModel, draw_agreement: float | None) -> str:
    """How to read the evasion battery's numbers for this defended model."""
    parts = [
        "The evasion battery attacks the defended model's forward pass (transforms, then the classifier) and "
        "counts misclassifications only"
    ]
    if len(defended.detectors):
        parts.append("detector rejections are not counted there, so its curves understate the defence")
    if not defended.differentiable:
        parts.append(
            "its transforms are not differentiable, so plain gradient attacks may be blunted (gradient masking) "
            "and its curves may overstate the defence"
        )
    if defended.randomized:
        agree = (
            "" if draw_agreement is None else f" ({100 * draw_agreement:.1f}% of clean predictions repeat)"
        )
        parts.append(
            "the defence is random: the battery judges each input by one draw, reseeded from the run's seed "
            f"at the start{agree}"
        )
    return "; ".join(parts) + ". The defence section judges the whole defence with the adaptive attack."


def conclusion(section: Mapping[str, Any]) -> str:
    """The section's one-sentence verdict: adaptive robust accuracy, the non-adaptive one, the clean cost."""
    clean = section["clean"]
    cost = clean["classifier_accuracy"] - clean["defended_accuracy"]
    return (
        f"Against an attacker who adapts to it, the defence keeps {100 * section['robust_accuracy']:.1f}% of the "
        f"images at eps={section['eps_label']} (rightly classified or rejected), against "
        f"{100 * section['transfer']['robust_accuracy']:.1f}% when judged with examples crafted on the bare "
        f"classifier; it costs {100 * cost:.1f} points of clean accuracy ({100 * clean['rejected']:.1f}% of "
        "clean inputs rejected)."
    )


def gated_accuracy(reference: float | None, section: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """(accuracy the `fail_under` gate reads, where it comes from). For a defended model: the defence section's
    robust accuracy, which counts rejections; without detectors the evasion battery's worst case is a
    whole-defence number too, so the lower of the two."""
    if not section:
        return reference, "evasion worst case"
    robust = float(section["robust_accuracy"])
    if section["defense"]["detectors"] or reference is None or robust <= reference:
        return robust, "defence section (adaptive attack)"
    return reference, "evasion worst case"


def citations(defended: DefendedModel) -> dict[str, str | None]:
    """The papers the adaptive attack and each part of the defence follow (report.json's citations)."""
    parts = [*defended.transforms, *defended.detectors]
    return {
        ADAPTIVE_LABEL: attack_citation(defense_section),  # this module's docstring: Athalye et al. 2018
        **{type(p).__name__: attack_citation(type(p)) for p in parts},
    }
