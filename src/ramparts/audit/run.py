"""`run_audit`: validate the request, prepare (or resume) the run folder, run the checks, write the report."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ramparts.audit import blackbox as bb
from ramparts.audit import defense as de
from ramparts.audit import encryption as en
from ramparts.audit import membership as mi
from ramparts.audit import poisoning as po
from ramparts.audit import theft as th
from ramparts.audit.checks import (
    DEFAULT_BLACKBOX,
    DEFAULT_BLACKBOX_L2_EPS,
    DEFAULT_BLACKBOX_N,
    DEFAULT_CHECKS,
    DEFAULT_EPS_GRID,
    DEFAULT_N,
    DEFAULT_QUERY_BUDGETS,
    DEFAULT_REFERENCE_EPS,
    BlackBoxCheck,
    Check,
    parse_grid_eps,
    resolve_blackbox,
    resolve_budgets,
    resolve_checks,
    resolve_grid,
)
from ramparts.audit.masking import masking_checks
from ramparts.audit.model import (
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    TRAIN_BATCH,
    TRAIN_LR,
    default_split,
    describe_kind,
    kind_of,
    load_trained_model,
    model_identity,
    resolve_recipe,
    save_model,
    tensor_digest,
    train_default_model,
    training_identity,
    wrap,
)
from ramparts.audit.progress import AuditProgress
from ramparts.audit.report import AuditReport, describe_data, reference_row, worst_case
from ramparts.audit.run_folder import open_run_folder, run_config
from ramparts.audit.runner import CONFIDENT, AuditRun
from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.evasion import ATTACKS
from ramparts.oracles import Knowledge, Oracle, TorchOracle
from ramparts.privacy import MEMBERSHIP
from ramparts.report.environment import collect_environment
from ramparts.report.figures import evasion_figures
from ramparts.report.html import write_html
from ramparts.report.json import write_json
from ramparts.report.summary import attack_citation, headlines
from ramparts.theft import THEFTS


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
    overwrite: bool = False,
    blackbox: Sequence[str | BlackBoxCheck] | str | None = DEFAULT_BLACKBOX,
    query_budgets: Sequence[int | str] | str = DEFAULT_QUERY_BUDGETS,
    blackbox_n: int = DEFAULT_BLACKBOX_N,
    blackbox_l2_eps: float | str = DEFAULT_BLACKBOX_L2_EPS,
    theft: str | None = th.DEFAULT_THEFT,
    theft_seeds: int = th.DEFAULT_THEFT_SEEDS,
    membership_shadows: int = mi.DEFAULT_SHADOWS,
    poisoning_fractions: Sequence[float] | None = po.DEFAULT_FRACTIONS,
    poisoning_records: int = 0,
    encryption: bool = True,
    encryption_queries: int = en.DEFAULT_QUERIES,
    settings: Mapping[str, Any] | None = None,
    defense_steps: int = de.DEFAULT_STEPS,
    defense_eot_samples: int = de.DEFAULT_EOT_SAMPLES,
    defense_votes: int = de.DEFAULT_VOTES,
    recipe: str = "auto",
) -> AuditReport:
    """Audit `model` (default: train `small_cnn` on `train_ds`, default the digits) on `n` test images.

    `eps_grid`: linf budgets (floats, '8/255', '5px' or one comma-separated string); the reference eps
    is added to it. `attacks`: keys of `CHECKS`, other registered attack names, or `Check`s.
    `out_dir`: the run folder to write (None: nothing written, figures kept in memory). A folder holding
    a run of the same configuration (model weights or training setup, data, checks, grid, n, seed) is
    resumed: what it recorded is reused and only the rest is run. A folder of another configuration is
    refused (`RunFolderMismatchError`) unless `overwrite`, which starts afresh.
    `fail_under`: a gate; `report.gate["passed"]` says whether the worst-case accuracy under attack at
    the reference eps reached it.
    `blackbox`: the black-box section's score- and label-based attacks (names of registered attacks or
    `BlackBoxCheck`s; None or "none": no section), each run at every budget of `query_budgets` (queries
    per image) on the first `blackbox_n` audited images, linf ones at the reference eps and L2 ones at
    `blackbox_l2_eps`.
    `theft`: the theft section's attack ("jacobian", label-only; None or "none": no section), started
    from `theft_seeds` held-out test images; the copy's fidelity and accuracy against the labels used, and
    FGSM crafted on it transferred to the model at the reference eps and a larger one.
    `membership_shadows`: shadow models of the membership section (0: no section); it runs where the
    training data is known (the default model, or `train_ds` given with `model`, taken as its training set).
    `settings`: how the caller resolved this request (profile, config file, flags), JSON-ready; written to
    report.json as it is so the run can be repeated exactly (it does not enter the run's identity).
    `encryption`: the encryption section (can the model run on CKKS-encrypted inputs, at what cost; an
    encryptable x^2 twin is trained where the training data is known and the model is not encryptable as it
    is), with `encryption_queries` single encrypted queries timed besides the batch of audited images.
    `poisoning_fractions`: poisoned shares of the training set for the poisoning section (None or empty: no
    section); it retrains the default recipe, so it runs where the training data is known, like membership;
    `poisoning_records` > 0 retrains on that many training records drawn with `seed` (a CPU budget for large
    training sets; 0: all of them).
    `defense_steps`: when `model` is a `DefendedModel`, the defence section judges the whole defence at the
    reference eps with PGD crafted on its bare classifier and with `adaptive_pgd` (BPDA, EOT over
    `defense_eot_samples` draws for a random defence, the detector term), each of `defense_steps` steps
    (0: no section); a random defence answers by a majority of `defense_votes` draws. Its random transforms
    are reseeded from `seed` first, so the audit repeats.
    `model` may be any oracle: one without gradients (an ONNX file, an HTTP API: `load_audit_model`) gets
    the sections it allows (black-box evasion, theft; score-based attacks need scores), and report.json's
    `config.skipped` names each section that did not run and why (also in the headlines when the model
    could not allow it; sections switched off are listed too). With no white-box battery, the reference
    row has no robust accuracy, so a `fail_under` gate cannot pass.
    `recipe`: what membership (shadow models) and poisoning retrain (`resolve_recipe`): "auto" (the
    default model's own recipe; a given model's zoo architecture with the audit's hyperparameters; a
    model of unknown architecture: both sections skipped), "default" (the audit's default recipe as a
    stated proxy) or a zoo architecture. `config.recipe` in report.json says which was used and why.
    """
    t_start = time.perf_counter()
    counts = (("n", n, 1), ("seed", seed, 0), ("blackbox_n", blackbox_n, 1), ("theft_seeds", theft_seeds, 1))
    for name, value, low in (*counts, ("membership_shadows", membership_shadows, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise invalid(name, value, f"an integer >= {low}")
    fractions = po.check_fractions(poisoning_fractions)
    check_int("poisoning_records", poisoning_records, 0)
    if fail_under is not None and (
        isinstance(fail_under, bool) or not isinstance(fail_under, int | float) or not 0 <= fail_under <= 1
    ):
        raise invalid("fail_under", fail_under, "an accuracy in [0, 1]", "e.g. --fail-under 0.5.")
    ref = parse_grid_eps(reference_eps, bounds)
    if ref <= 0:
        raise invalid("reference_eps", reference_eps, "a budget > 0", "e.g. 8/255.")
    grid = resolve_grid(eps_grid, ref, bounds)
    checks = resolve_checks(attacks)
    black = resolve_blackbox(blackbox)
    budgets = resolve_budgets(query_budgets)
    l2_eps = _l2_eps(blackbox_l2_eps, bounds)
    theft_name = th.resolve_theft(theft)
    if train_ds is None and test_ds is None:
        train_ds, test_ds = default_split(seed=0)
    if test_ds is None:
        raise invalid(
            "test_ds", None, "a held-out Dataset to attack", "pass test_ds=... (train_ds is optional)."
        )
    oracle = None if model is None else wrap(model, test_ds)
    kind = kind_of(oracle, model_info)
    recipe_arch, recipe_source = resolve_recipe(recipe, model_info, trained_here=oracle is None, kind=kind)
    unavailable, switched_off = _skipped(
        oracle,
        kind=kind,
        checks=checks,
        black=black,
        theft=theft_name,
        membership=membership_shadows,
        fractions=fractions,
        encryption=encryption,
        train_ds=train_ds,
        recipe=recipe_source if recipe_arch is None else None,
    )
    if "evasion_white_box" in unavailable:
        checks = []
    black = [c for c in black if f"evasion_black_box/{c.key}" not in unavailable]
    defended = de.defended_model(model, oracle)
    check_int("defense_steps", defense_steps, 0)
    if defended is not None:
        de.reseed_defense(defended, seed)
    identity = {
        "model": model_identity(oracle)
        if oracle is not None
        else training_identity(_trainable(train_ds), epochs=epochs, seed=seed),
        "data": {"test_data_sha256": tensor_digest(test_ds.x, test_ds.y)},
        # thresholds and settings are not in the state_dict that `model` fingerprints
        **({"defense": de.describe_defense(defended)} if defended is not None else {}),
    }
    config = run_config(
        checks=checks,
        grid=grid,
        ref=ref,
        n=min(n, len(test_ds)),
        seed=seed,
        bounds=bounds,
        input_numel=test_ds.x[0].numel(),
        identity=identity,
        blackbox=None
        if not black
        else {
            "checks": [c.summary() for c in black],
            "query_budgets": budgets,
            "n": min(blackbox_n, n, len(test_ds)),
            "l2_eps": l2_eps,
            "threat_models": {
                c.key: bb.threat_for(c, ref=ref, l2_eps=l2_eps, bounds=bounds).summary() for c in black
            },
            "counting": bb.COUNTING,
        },
        theft=None
        if theft_name is None
        else th.theft_config(theft_name, min(theft_seeds, len(test_ds)), ref, grid, bounds),
        membership=None
        if train_ds is None or "membership" in unavailable or "membership" in switched_off
        else mi.membership_config(train_ds, test_ds, membership_shadows, epochs),
        poisoning=None
        if train_ds is None or "poisoning" in unavailable or "poisoning" in switched_off
        else po.poisoning_config(
            po.training_subset(train_ds, poisoning_records, seed), fractions, epochs, of=len(train_ds)
        ),
    )
    for retrains in ("membership", "poisoning"):  # they build the default recipe; a given model's may differ
        if config[retrains] is not None:
            config[retrains]["recipe"]["arch"] = recipe_arch
    if not isinstance(encryption, bool):
        raise invalid("encryption", encryption, "True or False", cls=RampartsTypeError)
    config["encryption"] = (
        en.encryption_config(
            tuple(test_ds.input_shape), twin=train_ds is not None, epochs=epochs, queries=encryption_queries
        )
        if encryption
        else None
    )
    config["defense"] = (
        None
        if defended is None or defense_steps == 0
        else de.defense_config(
            defended,
            ref=ref,
            steps=defense_steps,
            eot_samples=defense_eot_samples,
            votes=defense_votes,
            bounds=bounds,
        )
    )
    out = Path(out_dir) if out_dir is not None else None
    recorded = open_run_folder(out, config, overwrite=overwrite) if out is not None else None
    # Derived from what the identity already holds, so report.json only (config.json stays resumable).
    config["skipped"] = {**unavailable, **switched_off}
    config["recipe"] = (
        {
            "arch": recipe_arch,
            "epochs": epochs,
            "lr": TRAIN_LR,
            "batch_size": TRAIN_BATCH,
            "source": recipe_source,
        }
        if recipe_arch is not None
        else {"arch": None, "reason": recipe_source}
    )
    data = describe_data(train_ds, test_ds)
    linf = [c for c in checks if not c.minimizes_norm]
    minimal = [c for c in checks if c.minimizes_norm]
    timings: dict[str, float] = {}
    info: dict[str, Any] = dict(model_info or {})
    model_reused = False

    ran = {
        "defence": config["defense"] is not None and defended is not None,
        "theft": config["theft"] is not None,
        "membership": config["membership"] is not None and train_ds is not None,
        "poisoning": config["poisoning"] is not None and train_ds is not None,
        "encryption": config["encryption"] is not None
        and (oracle is None or isinstance(oracle, TorchOracle)),
    }
    steps = len(linf) * len(grid) + len(minimal) + len(black) * len(budgets) + sum(ran.values())
    plan = {
        "training": int(oracle is None),
        "white-box": len(linf) * len(grid) + len(minimal),
        "defence": de.STEPS * ran["defence"],
        "black-box": len(black) * len(budgets),
        "theft": th.STEPS * ran["theft"],
        "membership": mi.steps(config["membership"]) if ran["membership"] else 0,
        "poisoning": po.steps(config["poisoning"]) if ran["poisoning"] else 0,
        "encryption": en.STEPS * ran["encryption"],
        "report": 1,
    }
    with AuditProgress(plan, enabled=progress) as bar:
        if oracle is None:
            bar.section("training")
            saved = recorded.metrics.get("model") if recorded is not None else None
            module = load_trained_model(out, saved) if out is not None and isinstance(saved, dict) else None
            if module is not None and isinstance(saved, dict):
                info, model_reused = dict(saved), True
            else:
                bar.status(f"{DEFAULT_ARCH} ({epochs} epochs)")
                t0 = time.perf_counter()
                module, info = train_default_model(_trainable(train_ds), test_ds, epochs=epochs, seed=seed)
                timings["train_s"] = time.perf_counter() - t0
            bar.advance()
            oracle = wrap(module, test_ds)
        torch_module = oracle.model if isinstance(oracle, TorchOracle) else None
        if torch_module is not None:
            info.setdefault("parameters", sum(p.numel() for p in torch_module.parameters()))
        info.setdefault("description", type(torch_module if torch_module is not None else oracle).__name__)
        info.setdefault("kind", kind)
        info.setdefault("knowledge", oracle.knowledge.name.lower())
        if out is not None and not model_reused:
            save_model(oracle, info, data, bounds, out)
        run = AuditRun(oracle, test_ds, n, seed, bounds, grid, out, bar, recorded, info)
        run.write_metrics()
        if plan["white-box"]:
            bar.section("white-box")
        for check in linf:
            t0 = time.perf_counter()
            run.sweep(check, grid, on_step=run.tick)
            timings[f"{check.key}_s"] = time.perf_counter() - t0
        for check in minimal:
            t0 = time.perf_counter()
            run.minimum_norm(check)
            timings[f"{check.key}_s"] = time.perf_counter() - t0
            run.tick()
        guarded = None
        if ran["defence"] and defended is not None:
            bar.section("defence")
            t0 = time.perf_counter()
            guarded = de.defense_section(run, defended, config["defense"])
            timings["defense_s"] = time.perf_counter() - t0
        sections: dict[str, dict[str, Any]] = {}
        if black and budgets:
            bar.section("black-box")
        for bcheck in black:
            t0 = time.perf_counter()
            threat = bb.threat_for(bcheck, ref=ref, l2_eps=l2_eps, bounds=bounds)
            sections[bcheck.key] = bb.budget_sweep(
                run, bcheck, budgets, threat, config["blackbox"]["n"], on_step=run.tick
            )
            timings[f"bb_{bcheck.key}_s"] = time.perf_counter() - t0
        stolen = None
        if ran["theft"]:
            bar.section("theft")
            t0 = time.perf_counter()
            stolen = th.theft_section(run, test_ds, config["theft"])
            timings["theft_s"] = time.perf_counter() - t0
        leaks = None
        if ran["membership"] and train_ds is not None:
            bar.section("membership")
            t0 = time.perf_counter()
            leaks = mi.membership_section(run, train_ds, test_ds, config["membership"])
            timings["membership_s"] = time.perf_counter() - t0
        poisoned = None
        if ran["poisoning"] and train_ds is not None:
            bar.section("poisoning")
            t0 = time.perf_counter()
            poison_ds = po.training_subset(train_ds, poisoning_records, seed)
            poisoned = po.poisoning_section(run, poison_ds, test_ds, config["poisoning"])
            timings["poisoning_s"] = time.perf_counter() - t0
        encrypted = None
        if ran["encryption"] and torch_module is not None:
            bar.section("encryption")
            t0 = time.perf_counter()
            encrypted = en.encryption_section(run, torch_module, train_ds, test_ds, config["encryption"])
            timings["encryption_s"] = time.perf_counter() - t0

        bar.section("report")
        t0 = time.perf_counter()
        # No white-box battery (a model without gradients): no worst case, rather than the clean accuracy.
        worst = worst_case(run.findings, grid if checks else [], run.masks, run.correct)
        reference = reference_row(run.findings, worst, ref, run.clean_accuracy, bounds)
        for section in sections.values():
            section["white_box"] = bb.white_box_reference(run, section, run.masks, grid)
        black_box = (
            {"n": config["blackbox"]["n"], "query_budgets": budgets, "checks": sections} if black else None
        )
        main = next((c for c in linf if c.key == "pgd"), linf[0] if linf else None)
        masking = masking_checks(run.findings, black_box, guarded)
        report = AuditReport(
            config=config,
            model=info,
            data=data,
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
                blackbox=black_box,
                theft=stolen,
                membership=leaks,
                poisoning=poisoned,
                encryption=encrypted,
                masking=masking,
                defense=guarded,
            )
            + _skip_headlines(
                unavailable,
                config["recipe"],
                retrained=[name for name, ran in (("Membership", leaks), ("Poisoning", poisoned)) if ran],
                kind=kind,
            ),
            citations={
                **{c.label: attack_citation(ATTACKS.get(c.attack)) for c in checks},
                **{c.label: attack_citation(ATTACKS.get(c.attack)) for c in black},
                **(
                    {stolen["label"]: attack_citation(THEFTS.get(stolen["config"]["attack"]))}
                    if stolen
                    else {}
                ),
                **(
                    {r["label"]: attack_citation(MEMBERSHIP.get(r["attack"])) for r in leaks["attacks"]}
                    if leaks
                    else {}
                ),
                **(po.citations(poisoned) if poisoned else {}),
                **(en.CITATIONS if encrypted else {}),
                **(de.citations(defended) if guarded and defended is not None else {}),
            },
            timings=timings,
            environment=collect_environment(),
            out_dir=out,
            resumed=None
            if recorded is None
            else {
                "measurements_reused": run.reused,
                "measurements": steps,
                "model_reused": model_reused,
            },
            arrays=run.arrays,
            blackbox=black_box,
            theft=stolen,
            membership=leaks,
            poisoning=poisoned,
            masking=masking,
            defense=guarded,
            encryption=encrypted,
            settings=dict(settings or {}),
        )
        if fail_under is not None:
            acc, source = de.gated_accuracy(reference["robust_accuracy"], guarded)
            passed = acc is not None and acc >= fail_under
            report.gate = {
                "fail_under": float(fail_under),
                "eps": ref,
                "robust_accuracy": acc,
                "source": source,
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
            write_html(report.to_dict(), report.figures, out / "report.html")
            timings["total_s"] = time.perf_counter() - t_start
            write_json(report.to_dict(), out / "report.json")
        bar.close()
    return report


def _trainable(train_ds: Dataset | None) -> Dataset:
    """The data to train the default model on (there is no model to audit)."""
    if train_ds is None:
        raise invalid("train_ds", None, "a Dataset to train the default model on", "or pass model=...")
    return train_ds


# report.json's `config.skipped` keys (one black-box attack: `evasion_black_box/<key>`) -> headline names.
SECTIONS: dict[str, str] = {
    "evasion_white_box": "white-box evasion",
    "evasion_black_box": "black-box evasion",
    "theft": "model theft",
    "membership": "membership inference",
    "poisoning": "poisoning",
    "encryption": "encrypted inference",
}


def unavailable_sections(
    model: nn.Module | Oracle | None,
    test_ds: Dataset,
    *,
    train_ds: Dataset | None = None,
    model_info: Mapping[str, Any] | None = None,
    recipe: str = "auto",
) -> dict[str, str]:
    """The sections `run_audit` with its default settings cannot run on `model` (None: the default model) and
    why, as report.json's `config.skipped` will say: for a command to tell the user before the audit starts."""
    oracle = None if model is None else wrap(model, test_ds)
    kind = kind_of(oracle, model_info)
    arch, source = resolve_recipe(recipe, model_info, trained_here=oracle is None, kind=kind)
    unavailable, _ = _skipped(
        oracle,
        kind=kind,
        checks=resolve_checks(DEFAULT_CHECKS),
        black=resolve_blackbox(DEFAULT_BLACKBOX),
        theft=th.DEFAULT_THEFT,
        membership=mi.DEFAULT_SHADOWS,
        fractions=po.DEFAULT_FRACTIONS,
        encryption=True,
        train_ds=train_ds,
        recipe=source if arch is None else None,
    )
    return unavailable


def _skipped(
    oracle: Oracle | None,
    *,
    kind: str,
    checks: Sequence[Check],
    black: Sequence[BlackBoxCheck],
    theft: str | None,
    membership: int,
    fractions: Sequence[float],
    encryption: bool,
    train_ds: Dataset | None,
    recipe: str | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(sections the model or the data do not allow -> why, sections switched off -> by what).

    `oracle` None is the default model, trained here (white-box, training data known). `recipe`: why no
    recipe can be retrained (None: one can)."""
    what = f"the model is {describe_kind(kind)}"
    knowledge = Knowledge.GRADIENT if oracle is None else oracle.knowledge
    torch_module = oracle is None or isinstance(oracle, TorchOracle)
    unavailable: dict[str, str] = {}
    off: dict[str, str] = {}
    if knowledge < Knowledge.GRADIENT and checks:
        unavailable["evasion_white_box"] = f"needs gradients, and {what}"
    if not black:
        off["evasion_black_box"] = "switched off (blackbox=none)"
    for c in black:
        if knowledge < ATTACKS.get(c.attack).knowledge:
            unavailable[f"evasion_black_box/{c.key}"] = (
                f"{c.label} needs {c.knowledge} access, and {what} that answers labels only"
            )
    if theft is None:
        off["theft"] = "switched off (theft=none)"
    unknown_data = "needs the model's training data (pass train_ds: the dataset the model was trained on)"
    if membership == 0:
        off["membership"] = "switched off (membership_shadows=0)"
    elif train_ds is None:
        unavailable["membership"] = unknown_data
    elif knowledge < Knowledge.SCORE:
        unavailable["membership"] = f"needs scores (LOSS, LiRA), and {what} that answers labels only"
    elif recipe is not None:
        unavailable["membership"] = recipe
    if not fractions:
        off["poisoning"] = "switched off (poisoning_fractions=none)"
    elif train_ds is None:
        unavailable["poisoning"] = unknown_data
    elif recipe is not None:
        unavailable["poisoning"] = recipe
    if not encryption:
        off["encryption"] = "switched off (encryption=False)"
    elif not torch_module:
        unavailable["encryption"] = (
            f"needs the model's layers (a torch module) to compile them for CKKS, and {what}"
        )
    return unavailable, off


def _skip_headlines(
    unavailable: Mapping[str, str], recipe: Mapping[str, Any], *, retrained: Sequence[str], kind: str
) -> list[str]:
    """Headline sentences: each section the model could not allow, and the recipe that the `retrained`
    sections of a given model used (the default model's is its own)."""
    names: dict[str, list[str]] = {}  # reason -> the sections it stops, one sentence for all of them
    for key, reason in unavailable.items():
        section, _, attack = key.partition("/")
        names.setdefault(reason, []).append(
            SECTIONS.get(section, section) + (f" ({attack})" if attack else "")
        )
    lines = [f"Not run: {', '.join(sections)}: {reason}." for reason, sections in names.items()]
    if retrained and kind != "trained_here" and recipe.get("arch") is not None:
        lines.append(
            f"{' and '.join(retrained)} retrained {recipe['arch']} (epochs {recipe['epochs']}, lr {recipe['lr']:g}, "
            f"batch {recipe['batch_size']}): {recipe['source']}."
        )
    return lines


def _l2_eps(value: float | str, bounds: tuple[float, float]) -> float:
    """The black-box section's L2 budget: a number or fraction > 0, at most the L2 diameter is checked later."""
    from ramparts.threat import parse_eps

    try:
        eps = parse_eps(value, norm="l2", bounds=bounds, pixel_scale=255.0)
    except ValueError:
        eps = math.nan
    if not (math.isfinite(eps) and eps > 0):
        raise invalid("blackbox_l2_eps", value, "an L2 budget > 0", "e.g. 1.0.")
    return eps
