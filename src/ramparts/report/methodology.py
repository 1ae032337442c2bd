"""The report's methodology: every attack with its full configuration, seed, budget, compute and time, and the
machine and versions it ran on, read from report.json's `config`, the sections' result summaries, `timings` and
`environment` (so the HTML needs nothing that report.json does not hold)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def methodology(report: Mapping[str, Any]) -> dict[str, Any]:
    """`attacks`: rows {section, label, attack, knowledge, config, threat, seed, budget, compute, seconds, paper};
    `hardware` and `software`: one line each; `settings`: how the run was requested (JSON text or None)."""
    config = report.get("config") or {}
    timings = report.get("timings") or {}
    citations = report.get("citations") or {}
    seed = config.get("seed")
    rows: list[dict[str, Any]] = []
    findings = (report.get("evasion") or {}).get("findings") or []
    minimum = (report.get("evasion") or {}).get("minimum_norm") or {}
    threats = config.get("threat_models") or {}
    for check in config.get("checks") or []:
        key = check["key"]
        mine = [f for f in findings if f["check"] == key]
        summaries = [f["summary"] for f in mine if f.get("summary")]
        if key in minimum and minimum[key].get("summary"):
            summaries.append(minimum[key]["summary"])
        resolved = summaries[0]["config"] if summaries else check.get("params", {})
        threat = threats.get(key, {})
        budget = (
            f"minimum-norm ({check['norm']}), {minimum.get(key, {}).get('attacked', '?')} images"
            if check.get("minimizes_norm")
            else f"{_grid(config.get('eps_grid_labels') or [])}; {config.get('n')} images"
        )
        rows.append(
            _attack_row(
                "Evasion, white-box",
                check["label"],
                check["attack"],
                "gradient",
                resolved,
                threat,
                seed,
                budget,
                _compute(summaries),
                timings.get(f"{key}_s"),
                citations.get(check["label"]),
            )
        )
    black = config.get("blackbox") or {}
    sections = (report.get("blackbox") or {}).get("checks") or {}
    for check in black.get("checks") or []:
        key = check["key"]
        section = sections.get(key) or {}
        summaries = [r["summary"] for r in section.get("rows") or [] if r.get("summary")]
        resolved = dict(summaries[-1]["config"]) if summaries else dict(check.get("params", {}))
        if check.get("budget_param"):
            resolved[check["budget_param"]] = "query budget"
        rows.append(
            _attack_row(
                "Evasion, black-box",
                check["label"],
                check["attack"],
                check.get("knowledge", "score"),
                resolved,
                (black.get("threat_models") or {}).get(key, {}),
                seed,
                f"query budgets {', '.join(f'{b:,}' for b in black.get('query_budgets') or [])} per image; "
                f"{black.get('n')} images",
                _compute(summaries),
                timings.get(f"bb_{key}_s"),
                citations.get(check["label"]),
            )
        )
    rows.extend(_theft_rows(report, seed, timings, citations))
    rows.extend(_membership_rows(report, seed, timings, citations))
    rows.extend(_poisoning_rows(report, seed, timings, citations))
    rows.extend(_other_rows(report, seed, timings, citations))
    return {
        "attacks": rows,
        "hardware": hardware(report.get("environment") or {}),
        "software": software(report.get("environment") or {}),
        "settings": json.dumps(report["settings"], sort_keys=True) if report.get("settings") else None,
        "training": _training(report.get("model") or {}),
    }


def hardware(env: Mapping[str, Any]) -> str:
    """One line: CPU cores and threads, accelerators."""
    cpu = env.get("cpu") or {}
    devices = (env.get("accelerators") or {}).get("cuda_devices") or []
    gpus = ", ".join(f"{d.get('name')} ({d.get('memory_gib')} GiB)" for d in devices) or "no GPU"
    return (
        f"{cpu.get('processor', '?')} CPU, {cpu.get('usable_cpus', '?')} usable of {cpu.get('logical_cpus', '?')} "
        f"logical cores, torch threads {cpu.get('torch_threads', '?')}; {gpus}"
    )


def software(env: Mapping[str, Any]) -> str:
    """One line: Python, platform and the versions of the packages that shape the numbers."""
    packages = env.get("packages") or {}
    listed = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    return f"Python {env.get('python', '?')} on {env.get('platform', '?')}; {listed}"


def _grid(labels: list[str]) -> str:
    """The linf grid in a few words: "9 eps from 2/255 to 80/255"."""
    if len(labels) > 2:
        return f"{len(labels)} eps from {labels[0]} to {labels[-1]}"
    return "eps " + ", ".join(labels)


def _attack_row(
    section: str,
    label: str,
    attack: str,
    knowledge: str,
    config: Mapping[str, Any],
    threat: Mapping[str, Any],
    seed: Any,
    budget: str,
    compute: str,
    seconds: float | None,
    paper: str | None,
) -> dict[str, Any]:
    return {
        "section": section,
        "label": label,
        "attack": attack,
        "knowledge": knowledge,
        "config": _text(config),
        "threat": _threat_text(threat),
        "seed": seed,
        "budget": budget,
        "compute": compute,
        "seconds": seconds,
        "paper": paper,
    }


def _text(value: Any) -> str:
    """Compact JSON of a configuration (sorted keys, so two reports compare line by line)."""
    if not value:
        return "defaults"
    return json.dumps(value, sort_keys=True, default=str)


def _threat_text(threat: Mapping[str, Any]) -> str:
    if not threat:
        return ""
    parts = [f"{threat.get('norm')}", f"goal {threat.get('goal')}", f"bounds {threat.get('bounds')}"]
    if threat.get("target") is not None:
        parts.append(f"target {threat['target']}")
    return ", ".join(parts)


def _compute(summaries: list[Mapping[str, Any]]) -> str:
    """Total forward and backward passes of the runs behind one attack's numbers."""
    forwards = sum(int(s.get("total_forwards") or 0) for s in summaries)
    backwards = sum(int(s.get("total_backwards") or 0) for s in summaries)
    if not forwards and not backwards:
        return ""
    return f"{forwards:,} forward / {backwards:,} backward passes"


def _theft_rows(
    report: Mapping[str, Any], seed: Any, timings: Mapping[str, float], citations: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    section, config = report.get("theft"), (report.get("config") or {}).get("theft")
    if not section or not config:
        return []
    transfer = section.get("transfer") or []
    compute = f"{section.get('queries', 0):,} labels to train the copy"
    if transfer:
        compute += f"; {transfer[-1].get('queries_total', 0):,} queries with the transfer checks"
    return [
        _attack_row(
            "Model theft",
            section.get("label", config["attack"]),
            config["attack"],
            config.get("knowledge", "label"),
            {**config.get("params", {}), "seeds": config.get("seeds")},
            {},
            seed,
            f"{config.get('seeds')} seed images, {section.get('queries', 0):,} label queries; fidelity on "
            f"{section.get('n_eval')} images",
            compute,
            timings.get("theft_s"),
            citations.get(section.get("label", "")),
        ),
        _attack_row(
            "Model theft",
            f"{str(config.get('transfer_attack', 'fgsm')).upper()} transferred from the copy",
            str(config.get("transfer_attack", "fgsm")),
            "gradient (of the copy)",
            (transfer[0].get("attack_summary") or {}).get("config", {}) if transfer else {},
            {"norm": "linf", "goal": "untargeted", "bounds": (report.get("config") or {}).get("bounds")},
            seed,
            "eps " + ", ".join(str(r.get("eps_label")) for r in transfer),
            "",
            None,
            citations.get(str(config.get("transfer_attack", "")).upper()),
        ),
    ]


def _membership_rows(
    report: Mapping[str, Any], seed: Any, timings: Mapping[str, float], citations: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    section, config = report.get("membership"), (report.get("config") or {}).get("membership")
    if not section or not config:
        return []
    recipe = _text(config.get("recipe"))
    return [
        _attack_row(
            "Membership inference",
            row["label"],
            row["attack"],
            "score",
            {
                **row.get("params", {}),
                "shadows": config.get("shadows"),
                "shadow recipe": config.get("recipe"),
            },
            {},
            seed,
            f"{config.get('members')} members, {config.get('non_members')} non-members; TPR at "
            f"{100 * float(section.get('fpr', 0)):g}% FPR",
            f"{row.get('queries', 0):,} queries; {config.get('shadows')} shadow models ({recipe})",
            timings.get("membership_s") if i == 0 else None,
            citations.get(row["label"]),
        )
        for i, row in enumerate(section.get("attacks") or [])
    ]


def _poisoning_rows(
    report: Mapping[str, Any], seed: Any, timings: Mapping[str, float], citations: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    section, config = report.get("poisoning"), (report.get("config") or {}).get("poisoning")
    if not section or not config:
        return []
    fractions = ", ".join(f"{100 * float(f):g}%" for f in config.get("fractions") or [])
    rows = [
        _attack_row(
            "Poisoning",
            row["label"],
            row["attack"],
            "training data",
            {**row.get("params", {}), "recipe": config.get("recipe")},
            {},
            seed,
            f"poisoned shares {fractions} of {config.get('train_records')} training records"
            + (f" (drawn from {config['drawn_from']})" if config.get("drawn_from") else ""),
            f"{len(row.get('curve') or [])} models retrained",
            timings.get("poisoning_s") if i == 0 else None,
            citations.get(row["label"]),
        )
        for i, row in enumerate(section.get("attacks") or [])
    ]
    if config.get("defense"):
        rows.append(
            _attack_row(
                "Poisoning (defence)",
                "Spectral signatures",
                str(config["defense"].get("method")),
                "training data",
                config["defense"],
                {},
                seed,
                f"the {100 * float((section.get('defense') or {}).get('fraction', 0)):g}% backdoored set",
                "1 model retrained",
                None,
                citations.get("Spectral signatures"),
            )
        )
    return rows


def _other_rows(
    report: Mapping[str, Any], seed: Any, timings: Mapping[str, float], citations: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    config = report.get("config") or {}
    rows = []
    if report.get("defense") and config.get("defense"):
        d = config["defense"]
        for name in ("transfer", "adaptive"):
            rows.append(
                _attack_row(
                    "Defence",
                    "PGD on the bare classifier"
                    if name == "transfer"
                    else "Adaptive PGD (BPDA/EOT, detector term)",
                    str(d[name].get("attack")),
                    "gradient",
                    d[name],
                    {"norm": "linf", "goal": "untargeted", "bounds": config.get("bounds")},
                    seed,
                    f"eps {d.get('eps_label')}; {report['defense'].get('n')} images; votes {d.get('votes')}",
                    "",
                    timings.get("defense_s") if name == "transfer" else None,
                    citations.get("Adaptive PGD (BPDA/EOT, detector term)") if name == "adaptive" else None,
                )
            )
    if report.get("encryption") and config.get("encryption"):
        measured = (report["encryption"].get("measured") or {}).get("batch") or {}
        parameters = measured.get("parameters") or {}
        rows.append(
            _attack_row(
                "Encryption",
                "CKKS inference",
                "ckks",
                "white-box (layers)",
                {**config["encryption"], "parameters": parameters},
                {},
                seed,
                f"{measured.get('n', 0)} images batched, {config['encryption'].get('queries')} single queries",
                "",
                timings.get("encryption_s"),
                citations.get("CKKS"),
            )
        )
    return rows


def _training(model: Mapping[str, Any]) -> str | None:
    """How the audited model was trained, when the audit trained it."""
    training = model.get("training") or {}
    if not model.get("trained_here") or not training.get("config"):
        return None
    return f"{model.get('arch', 'model')} trained here: {_text(training['config'])}"
