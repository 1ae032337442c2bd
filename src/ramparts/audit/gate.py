"""`--fail-under`: gate clauses evaluated against a finished audit report (report.json as a dict).

Grammar (clauses separated by commas or given one per `--fail-under`)::

    clause := METRIC [ "@" ARG ] OP BOUND  |  NUMBER
    OP     := ">=" | "<=" | ">" | "<" | "="      ("=": the metric's safe side, >= or <= per metric)
    BOUND  := a number, or a percentage ("40%")

A bare NUMBER is the original form: `robust_accuracy>=NUMBER` at the reference eps (through `run_audit`'s
`fail_under`, which keeps report.json's numeric gate fields). Metrics (`METRICS`; "safe" is the side the
"=" operator means):

| metric                      | ARG                         | safe | reads                                            |
|-----------------------------|-----------------------------|------|--------------------------------------------------|
| clean_accuracy              | -                           | >=   | accuracy on the audited images                   |
| robust_accuracy             | [linf:\\|CHECK:]EPS (ref.)  | >=   | worst case over the battery (or one check) at EPS; a defended model's gate reading at its eps |
| blackbox_success            | QUERIES (largest budget)    | <=   | highest success rate of the black-box attacks    |
| theft_fidelity              | -                           | <=   | agreement of the stolen copy with the model      |
| theft_accuracy              | -                           | <=   | the stolen copy's accuracy                       |
| transfer_rate               | EPS (reference)             | <=   | share of the model fooled by FGSM crafted on the copy |
| mia_tpr                     | FPR (the section's FPR)     | <=   | membership TPR at FPR of the strongest attack    |
| mia_auc                     | -                           | <=   | the highest membership AUC                       |
| backdoor_success            | FRACTION (largest)          | <=   | BadNets success with that share poisoned         |
| poisoned_accuracy           | FRACTION (largest)          | >=   | lowest clean accuracy of a poisoned retrain      |
| sanitized_backdoor_success  | -                           | <=   | BadNets success after spectral signatures        |
| encrypted_agreement         | -                           | >=   | lowest agreement of CKKS and plaintext answers   |
| encrypted_accuracy          | -                           | >=   | lowest accuracy on encrypted inputs              |
| defense_robust_accuracy     | -                           | >=   | a defended model under the adaptive attack       |
| masking_warnings            | -                           | <=   | the number of gradient-masking warnings          |

EPS is parsed like the audit's grid (0.03, 8/255, 5px) and must be an eps the report measured. A metric whose
section the report lacks is an error naming the section and how to enable it (`check_settings` finds it
before the audit runs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ramparts.audit.checks import check_names, parse_grid_eps, resolve_budgets, resolve_grid
from ramparts.audit.defense import gated_accuracy
from ramparts.errors import RampartsError, invalid, unknown

PARAM = "fail_under"
_CLAUSE = re.compile(
    r"^(?P<metric>[a-z_]+)\s*(?:@(?P<at>[^<>=\s]+))?\s*(?P<op>>=|<=|=|>|<)\s*(?P<bound>\S+)$"
)
_EXAMPLE = "e.g. robust_accuracy@linf:8/255=0.4, mia_tpr@0.001<=0.02 or 0.5"
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, b: v >= b,
    "<=": lambda v, b: v <= b,
    ">": lambda v, b: v > b,
    "<": lambda v, b: v < b,
}
Reading = tuple[float | None, str]

ENABLE = {
    "evasion": "add a linf attack to --attacks (config: attacks).",
    "blackbox": "enable the black-box section: --blackbox square,hopskipjump (config: blackbox).",
    "theft": "enable the theft section: --theft jacobian (config: theft).",
    "membership": "enable the membership section: --membership-shadows 8 (config: membership_shadows); it "
    "needs the training data (the default model, or --data with the model's training split).",
    "poisoning": "enable the poisoning section: --poisoning-fractions 0.01,0.05 (config: poisoning_fractions); "
    "it needs the training data.",
    "encryption": "enable the encryption section: --encryption (config: encryption = true).",
    "defense": "audit a defended model (saved by `ramparts harden`) with --defense-steps > 0.",
}
# report.json's section keys as the report names them.
SECTION_NAMES = {"blackbox": "black-box", "defense": "defence"}


@dataclass(frozen=True)
class Clause:
    """One parsed clause: `metric` at `at` (raw argument text or None) compared by `op` with `bound`."""

    text: str
    metric: str
    at: str | None
    op: str
    bound: float
    numeric: bool = False

    def summary(self) -> dict[str, Any]:
        return {"clause": self.text, "metric": self.metric, "at": self.at, "op": self.op, "bound": self.bound}


@dataclass(frozen=True)
class ClauseResult:
    """A clause and what the report says: the measured value (None: not measured), pass or fail."""

    clause: Clause
    value: float | None
    passed: bool
    detail: str

    def line(self) -> str:
        """One line: the clause, the metric, the measured value and the bound."""
        c = self.clause
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        return (
            f"--fail-under {c.text}: {METRICS[c.metric].what} ({self.detail}) is {shown}, "
            f"required {c.op} {c.bound:g}"
        )

    def summary(self) -> dict[str, Any]:
        return {**self.clause.summary(), "value": self.value, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class GateOutcome:
    """Every clause's result; the gate passes when all of them do."""

    results: tuple[ClauseResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[ClauseResult]:
        return [r for r in self.results if not r.passed]

    def record(self, numeric_gate: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """report.json's `gate`: the numeric form's fields (from `run_audit`) kept, the clauses added."""
        return {**(numeric_gate or {}), "passed": self.passed, "clauses": [r.summary() for r in self.results]}


@dataclass(frozen=True)
class Metric:
    """A gate metric: its report section, the safe side, what its argument is, and how to read it."""

    section: str
    safe: str
    arg: str | None
    what: str
    read: Callable[[Mapping[str, Any], Clause], Reading]


def _fail(clause: Clause | str, expected: str, fix: str | None = None) -> RampartsError:
    return invalid(PARAM, clause.text if isinstance(clause, Clause) else clause, expected, fix)


def _section(report: Mapping[str, Any], clause: Clause) -> Any:
    name = METRICS[clause.metric].section
    section = report.get(name)
    if not section:
        shown = SECTION_NAMES.get(name, name)
        raise _fail(clause, f"a metric the report holds, but its {shown} section was skipped", ENABLE[name])
    return section


def _eps_arg(at: str) -> tuple[str | None, str]:
    """`linf:8/255` -> (None, "8/255"), `pgd:8/255` -> ("pgd", "8/255"), `8/255` -> (None, "8/255")."""
    prefix, sep, eps = at.partition(":")
    if not sep:
        return None, at
    prefix = prefix.strip().lower()
    return (None if prefix == "linf" else prefix), eps


def _bounds(report: Mapping[str, Any]) -> tuple[float, float]:
    lo, hi = report["config"]["bounds"]
    return float(lo), float(hi)


def _row_at(
    rows: Sequence[Mapping[str, Any]], key: str, value: float, clause: Clause, what: str, fix: str
) -> Mapping[str, Any]:
    for row in rows:
        if math.isclose(float(row[key]), value, rel_tol=1e-6, abs_tol=1e-9):
            return row
    have = ", ".join(str(r.get("eps_label", f"{r[key]:g}")) for r in rows)
    raise _fail(clause, f"{what} the report measured ({have})", fix)


def _robust(report: Mapping[str, Any], clause: Clause) -> Reading:
    bounds = _bounds(report)
    check, eps_text = _eps_arg(clause.at) if clause.at else (None, None)
    eps = float(report["reference"]["eps"]) if eps_text is None else parse_grid_eps(eps_text, bounds)
    evasion = report["evasion"]
    if check is not None:
        rows = [f for f in evasion["findings"] if f["check"] == check]
        if not rows:
            audited = sorted({f["check"] for f in evasion["findings"]})
            raise _fail(clause, f"a linf check of the audit: {', '.join(audited)}", "add it to --attacks.")
    else:
        rows = evasion["worst_case"]
        if not rows:
            raise _fail(clause, "a linf attack in the audit", ENABLE["evasion"])
    row = _row_at(rows, "eps", eps, clause, "an eps", "add it to --eps (or --reference-eps).")
    value: float | None = float(row["robust_accuracy"])
    label = row["eps_label"]
    if check is not None:
        return value, f"{row['label']} at {label}"
    source = "worst case over the battery"
    defense = report.get("defense")
    if defense and math.isclose(float(defense["eps"]), eps, rel_tol=1e-6):
        value, source = gated_accuracy(value, defense)
    return value, f"{source} at {label}"


def _clean(report: Mapping[str, Any], clause: Clause) -> Reading:
    return float(report["clean_accuracy"]), f"{report['config']['n']} audited images"


def _blackbox(report: Mapping[str, Any], clause: Clause) -> Reading:
    section = _section(report, clause)
    budgets = [int(b) for b in section["query_budgets"]]
    budget = int(clause.at) if clause.at else max(budgets)
    if budget not in budgets:
        raise _fail(clause, f"a query budget the report measured ({budgets})", "add it to --query-budgets.")
    best: tuple[float, str] | None = None
    for check in section["checks"].values():
        row = next(r for r in check["rows"] if int(r["budget"]) == budget)
        if best is None or row["success_rate"] > best[0]:
            best = (float(row["success_rate"]), check["label"])
    if best is None:
        raise _fail(clause, "a black-box attack in the report", ENABLE["blackbox"])
    return best[0], f"{best[1]}, {budget} queries per image"


def _theft_value(key: str) -> Callable[[Mapping[str, Any], Clause], Reading]:
    def read(report: Mapping[str, Any], clause: Clause) -> Reading:
        section = _section(report, clause)
        return float(section[key]), f"{section['label']}, {section['queries']} queries"

    return read


def _transfer(report: Mapping[str, Any], clause: Clause) -> Reading:
    rows = _section(report, clause)["transfer"]
    eps = float(rows[0]["eps"]) if clause.at is None else parse_grid_eps(clause.at, _bounds(report))
    row = _row_at(rows, "eps", eps, clause, "an eps", "gate the reference eps or the grid's largest.")
    return float(row["transfer_rate"]), f"FGSM on the copy at {row['eps_label']}"


def _tpr(row: Mapping[str, Any], fpr: float, section: Mapping[str, Any], clause: Clause) -> float | None:
    if math.isclose(fpr, float(section["fpr"])):
        return row["tpr"]
    if math.isclose(fpr, 0.01):
        return row["tpr@0.01"]
    n_out = int(section["config"]["non_members"])
    if fpr * n_out < 1:
        raise _fail(
            clause,
            f"an FPR the {n_out} non-members resolve (>= {1 / n_out:.2g})",
            "gate a larger FPR, or audit with more held-out records.",
        )
    return max((float(t) for f, t in row["roc"] if f <= fpr), default=0.0)


def _mia_tpr(report: Mapping[str, Any], clause: Clause) -> Reading:
    section = _section(report, clause)
    fpr = float(section["fpr"]) if clause.at is None else float(clause.at)
    rates = [(_tpr(row, fpr, section, clause), row["label"]) for row in section["attacks"]]
    measured = [(v, label) for v, label in rates if v is not None]
    if not measured:
        return None, f"at FPR {fpr:g}"
    value, label = max(measured)
    return float(value), f"{label} at FPR {fpr:g}"


def _mia_auc(report: Mapping[str, Any], clause: Clause) -> Reading:
    rows = _section(report, clause)["attacks"]
    best = max(rows, key=lambda r: r["auc"])
    return float(best["auc"]), best["label"]


def _fraction_point(report: Mapping[str, Any], clause: Clause, row: Mapping[str, Any]) -> Mapping[str, Any]:
    points = [p for p in row["curve"] if p["fraction"] > 0]
    fraction = max(p["fraction"] for p in points) if clause.at is None else float(clause.at)
    return _row_at(
        points, "fraction", fraction, clause, "a poisoned share", "add it to --poisoning-fractions."
    )


def _backdoor(report: Mapping[str, Any], clause: Clause) -> Reading:
    section = _section(report, clause)
    row = next((r for r in section["attacks"] if r["attack"] == "badnets"), None)
    if row is None:
        raise _fail(clause, "a backdoor attack in the poisoning section", ENABLE["poisoning"])
    point = _fraction_point(report, clause, row)
    return point["attack_success"], f"{row['label']}, {point['fraction']:g} of the training set"


def _poisoned(report: Mapping[str, Any], clause: Clause) -> Reading:
    rows = _section(report, clause)["attacks"]
    points = [(float(_fraction_point(report, clause, r)["clean_accuracy"]), r["label"]) for r in rows]
    value, label = min(points)
    return value, label


def _sanitized(report: Mapping[str, Any], clause: Clause) -> Reading:
    defense = _section(report, clause).get("defense")
    if not defense:
        raise _fail(clause, "the poisoning section's sanitisation (it needs a backdoor)", ENABLE["poisoning"])
    return defense["after"]["attack_success"], f"after {defense['method']} at {defense['fraction']:g}"


def _encrypted(key: str) -> Callable[[Mapping[str, Any], Clause], Reading]:
    def read(report: Mapping[str, Any], clause: Clause) -> Reading:
        measured = _section(report, clause).get("measured")
        if not measured:
            raise _fail(
                clause,
                "encrypted measurements: the model cannot run on CKKS ciphertexts and no twin was trained",
                "give the training data (--data) so the audit trains an encryptable twin.",
            )
        runs = [measured[p] for p in ("batch", "query") if measured.get(p)]
        return min(float(r[key]) for r in runs), str(measured["model"])

    return read


def _defense(report: Mapping[str, Any], clause: Clause) -> Reading:
    section = _section(report, clause)
    return float(section["robust_accuracy"]), f"adaptive attack at {section['eps_label']}"


def _masking(report: Mapping[str, Any], clause: Clause) -> Reading:
    return float(len(report.get("masking_warnings") or [])), "warnings in the report"


METRICS: dict[str, Metric] = {
    "clean_accuracy": Metric("evasion", ">=", None, "clean accuracy", _clean),
    "robust_accuracy": Metric("evasion", ">=", "eps", "accuracy under attack", _robust),
    "blackbox_success": Metric("blackbox", "<=", "budget", "black-box success rate", _blackbox),
    "theft_fidelity": Metric("theft", "<=", None, "fidelity of the stolen copy", _theft_value("fidelity")),
    "theft_accuracy": Metric("theft", "<=", None, "accuracy of the stolen copy", _theft_value("accuracy")),
    "transfer_rate": Metric("theft", "<=", "eps", "transfer rate from the stolen copy", _transfer),
    "mia_tpr": Metric("membership", "<=", "fpr", "membership TPR", _mia_tpr),
    "mia_auc": Metric("membership", "<=", None, "membership AUC", _mia_auc),
    "backdoor_success": Metric("poisoning", "<=", "fraction", "backdoor success", _backdoor),
    "poisoned_accuracy": Metric("poisoning", ">=", "fraction", "clean accuracy after poisoning", _poisoned),
    "sanitized_backdoor_success": Metric(
        "poisoning", "<=", None, "backdoor success after sanitisation", _sanitized
    ),
    "encrypted_agreement": Metric(
        "encryption", ">=", None, "agreement of encrypted and plain answers", _encrypted("agreement")
    ),
    "encrypted_accuracy": Metric(
        "encryption", ">=", None, "accuracy on encrypted inputs", _encrypted("accuracy")
    ),
    "defense_robust_accuracy": Metric("defense", ">=", None, "robust accuracy of the defence", _defense),
    "masking_warnings": Metric("evasion", "<=", None, "gradient-masking warnings", _masking),
}


def _number(text: str) -> float | None:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_arg(clause: Clause) -> None:
    """Reject an argument the metric cannot take (syntax only: what was measured is known later)."""
    kind = METRICS[clause.metric].arg
    if clause.at is None:
        return
    if kind is None:
        raise _fail(clause, f"{clause.metric} without an @ argument", f"write {clause.metric}{clause.op}...")
    if kind == "eps":
        check, eps = _eps_arg(clause.at)
        if check is not None and (clause.metric != "robust_accuracy" or check not in check_names()):
            raise _fail(clause, "a linf eps, optionally after 'linf:' or an attack of the battery ('pgd:')")
        try:
            parse_grid_eps(eps, (0.0, 1.0))
        except (ValueError, TypeError):
            raise _fail(clause, "an eps like 0.03, 8/255 or 5px after @", _EXAMPLE) from None
        return
    number = _number(clause.at)
    ok = {
        "fpr": number is not None and 0 < number < 1,
        "fraction": number is not None and 0 < number < 0.5,
        "budget": clause.at.isdigit() and int(clause.at) >= 1,
    }[kind]
    if not ok:
        expected = {
            "fpr": "an FPR in (0, 1)",
            "fraction": "a share in (0, 0.5)",
            "budget": "a query budget >= 1",
        }
        raise _fail(clause, f"{expected[kind]} after @")


def parse_clause(text: str) -> Clause:
    """One clause (see the module docstring); errors name the clause and the grammar."""
    raw = text.strip()
    number = _number(raw)
    if number is not None:
        if not 0 <= number <= 1:
            raise _fail(raw, "an accuracy in [0, 1]", "e.g. --fail-under 0.5.")
        return Clause(raw, "robust_accuracy", None, ">=", number, numeric=True)
    match = _CLAUSE.match(raw.replace(" ", ""))
    if match is None:
        raise _fail(raw, f"METRIC[@ARG]OP BOUND with OP in >=, <=, =, >, < ({_EXAMPLE})")
    name = match["metric"]
    if name not in METRICS:
        raise unknown(f"{PARAM} {raw!r}: metric", name, METRICS)
    bound = _number(match["bound"])
    if bound is None:
        raise _fail(raw, "a number or a percentage after the operator", _EXAMPLE)
    if name != "masking_warnings" and not 0 <= bound <= 1:
        raise _fail(raw, f"a bound in [0, 1] for {name} (a rate)", "e.g. 0.4 or 40%.")
    op = METRICS[name].safe if match["op"] == "=" else match["op"]
    clause = Clause(raw, name, match["at"], op, bound)
    _check_arg(clause)
    return clause


def parse_gate(specs: Sequence[str | float] | str | float | None) -> list[Clause]:
    """Every clause of `specs` (strings holding comma-separated clauses, or numbers: the original form).

    At most one bare number (it goes to `run_audit(fail_under=...)`).
    """
    if specs is None:
        return []
    items = [specs] if isinstance(specs, str | int | float) else list(specs)
    clauses = [parse_clause(part) for item in items for part in str(item).split(",") if part.strip()]
    if sum(c.numeric for c in clauses) > 1:
        raise _fail(
            ", ".join(c.text for c in clauses if c.numeric),
            "at most one bare accuracy",
            "write robust_accuracy@EPS>=X for each further eps.",
        )
    return clauses


def numeric_bound(clauses: Sequence[Clause]) -> float | None:
    """The bound of the original numeric form among `clauses` (for `run_audit(fail_under=...)`), else None."""
    return next((c.bound for c in clauses if c.numeric), None)


def check_settings(clauses: Sequence[Clause], settings: Mapping[str, Any]) -> None:
    """Before the audit runs: every clause's section is switched on and its eps, budget or share is measured.

    `settings`: the resolved values of `ramparts.audit.profiles` (JSON form).
    """
    bounds = (float(settings["bounds"][0]), float(settings["bounds"][1]))
    on = {
        "evasion": True,
        "blackbox": bool(settings["blackbox"]),
        "theft": str(settings["theft"]).strip().lower() not in ("", "none"),
        "membership": settings["membership_shadows"] > 0,
        "poisoning": bool(settings["poisoning_fractions"]),
        "encryption": bool(settings["encryption"]),
        "defense": settings["defense_steps"] > 0,
    }
    for clause in clauses:
        section = METRICS[clause.metric].section
        if not on[section]:
            raise _fail(
                clause,
                f"a metric of a section the audit runs, but the {SECTION_NAMES.get(section, section)} section is off",
                ENABLE[section],
            )
        if clause.at is None:
            continue
        if clause.metric == "robust_accuracy":
            ref = parse_grid_eps(settings["reference_eps"], bounds)
            grid = resolve_grid(settings["eps_grid"], ref, bounds)
            eps = parse_grid_eps(_eps_arg(clause.at)[1], bounds)
            if not any(math.isclose(eps, g, rel_tol=1e-6, abs_tol=1e-9) for g in grid):
                raise _fail(clause, "an eps of the audit's grid", "add it to --eps (config: eps_grid).")
        elif clause.metric == "blackbox_success" and int(clause.at) not in resolve_budgets(
            settings["query_budgets"]
        ):
            raise _fail(clause, "a budget of --query-budgets", "add it to --query-budgets.")
        elif METRICS[clause.metric].arg == "fraction" and not any(
            math.isclose(float(clause.at), float(f)) for f in settings["poisoning_fractions"]
        ):
            raise _fail(clause, "a share of --poisoning-fractions", "add it to --poisoning-fractions.")


def evaluate_gate(clauses: Sequence[Clause], report: Mapping[str, Any]) -> GateOutcome:
    """Each clause read from `report` (report.json as a dict) and compared with its bound."""
    results = []
    for clause in clauses:
        value, detail = METRICS[clause.metric].read(report, clause)
        passed = value is not None and _COMPARE[clause.op](float(value), clause.bound)
        results.append(ClauseResult(clause, None if value is None else float(value), passed, detail))
    return GateOutcome(tuple(results))
