"""What the audit runs: the battery of checks, the default eps grid, and parsing of the grid."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.evasion import ATTACKS, EvasionAttack
from ramparts.threat import parse_eps

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
DEFAULT_N = 500


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


def _resolve(
    param: str,
    items: Sequence[Any],
    ready: type,
    lookup: Callable[[str], Any | None],
    allowed: Callable[[], list[str]],
) -> list[Any]:
    """Checks from a list of ready objects or names (resolved by `lookup`), each attack once."""
    checks: list[Any] = []
    for item in items:
        if isinstance(item, ready):
            checks.append(item)
            continue
        if not isinstance(item, str):
            raise invalid(param, item, f"attack names or {ready.__name__} objects", cls=RampartsTypeError)
        check = lookup(item.strip().lower())
        if check is None:
            raise unknown(param, item, allowed())
        checks.append(check)
    keys = [c.key for c in checks]
    if len(set(keys)) != len(keys):
        raise invalid(param, keys, "each attack once", "remove the repeated names.")
    return checks


def resolve_checks(names: Sequence[str | Check]) -> list[Check]:
    """Battery keys (`apgd-dlr`), registered attack names (`mifgsm`, linf) or ready `Check`s."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]

    def lookup(name: str) -> Check | None:
        if name in CHECKS:
            return CHECKS[name]
        if name in ATTACKS and "untargeted" in ATTACKS.get(name).goals:
            cls = ATTACKS.get(name)
            return Check(name, name, {}, "l2" if cls.minimizes_norm else "linf", name.upper())
        return None

    checks = _resolve("attacks", names, Check, lookup, check_names)
    if not checks:
        raise invalid("attacks", list(names), "at least one attack", f"pick from {', '.join(check_names())}.")
    return checks


def parse_grid_eps(eps: float | str, bounds: tuple[float, float]) -> float:
    """One linf budget of the grid (a number, '8/255' or '5px'), checked to lie in [0, width of bounds]."""
    value = parse_eps(eps, norm="linf", bounds=bounds, pixel_scale=255.0)
    if not (math.isfinite(value) and 0 <= value <= bounds[1] - bounds[0]):
        raise invalid("eps", eps, f"a budget in [0, {bounds[1] - bounds[0]:g}] for linf", "e.g. 8/255.")
    return value


def resolve_grid(
    grid: Sequence[float | str] | str, reference: float, bounds: tuple[float, float]
) -> list[float]:
    """The sorted, deduplicated grid (comma-separated string or sequence) with `reference` added, 0 dropped."""
    if isinstance(grid, str):
        grid = [e for e in grid.split(",") if e.strip()]
    values = {round(parse_grid_eps(e, bounds), 12) for e in grid}
    values.add(round(reference, 12))
    values.discard(0.0)
    return sorted(values)


def l2_cap(input_numel: int, width: float = 1.0) -> float:
    """The L2 diameter of the input box: a budget that does not bind (minimum-norm checks run under it)."""
    return width * math.sqrt(input_numel)


# The black-box section: success rate against the query budget per image, on a subset of the samples.
DEFAULT_QUERY_BUDGETS: tuple[int, ...] = (50, 100, 200, 500, 1000)
DEFAULT_BLACKBOX_N = 100
# L2 budget of the decision-based check: an RMS change of 32/255 per value on 8x8 digits (64 values).
DEFAULT_BLACKBOX_L2_EPS = "1.0"
DEFAULT_BLACKBOX: tuple[str, ...] = ("square", "hopskipjump")
# Hyperparameters that set an attack's own plan for its budget: given the budget of each step.
_BUDGET_PARAMS = ("n_queries",)


@dataclass(frozen=True)
class BlackBoxCheck:
    """A score- or label-based attack of the black-box section, run at each query budget per image.

    `norm="linf"` runs at the audit's reference eps, `norm="l2"` at its black-box L2 eps. `budget_param`:
    the hyperparameter through which the attack plans for its budget (Square's `n_queries`), set to each
    budget; the view enforces the budget in any case (`max_queries`).
    """

    key: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)
    norm: str = "linf"
    label: str = ""
    budget_param: str | None = None

    def __post_init__(self) -> None:
        from ramparts.oracles.base import Knowledge

        cls = ATTACKS.get(self.attack)
        if cls.knowledge >= Knowledge.GRADIENT:
            raise invalid(
                "blackbox", self.key, "a score- or label-based attack", f"e.g. {', '.join(DEFAULT_BLACKBOX)}."
            )
        if self.norm not in ("linf", "l2") or self.norm not in cls.norms:
            raise invalid("blackbox", self.key, f"an attack run in linf or l2 (it supports {cls.norms})")
        if "untargeted" not in cls.goals:
            raise invalid("blackbox", self.key, "an attack with an untargeted goal for the audit")
        if not self.label:
            object.__setattr__(self, "label", self.key.upper())

    @property
    def knowledge(self) -> str:
        return ATTACKS.get(self.attack).knowledge.name.lower()

    def build(self, budget: int) -> EvasionAttack:
        params = dict(self.params)
        if self.budget_param is not None:
            params[self.budget_param] = budget
        return ATTACKS.get(self.attack)(**params)

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "attack": self.attack,
            "label": self.label,
            "norm": self.norm,
            "params": dict(self.params),
            "knowledge": self.knowledge,
            "budget_param": self.budget_param,
        }


def blackbox_checks() -> dict[str, BlackBoxCheck]:
    """The section's named checks: Square (score-based, linf) and HopSkipJump (label-only, L2)."""
    return {
        c.key: c
        for c in (
            BlackBoxCheck("square", "square", {}, "linf", "Square", "n_queries"),
            BlackBoxCheck("hopskipjump", "hopskipjump", {}, "l2", "HopSkipJump"),
        )
    }


def blackbox_names() -> list[str]:
    """Every name `resolve_blackbox` accepts: score- or label-based attacks with an untargeted goal."""
    from ramparts.oracles.base import Knowledge

    return [
        n
        for n in ATTACKS.names()
        if ATTACKS.get(n).knowledge < Knowledge.GRADIENT
        and "untargeted" in ATTACKS.get(n).goals
        and {"linf", "l2"} & set(ATTACKS.get(n).norms)
    ]


def resolve_blackbox(names: Sequence[str | BlackBoxCheck] | str | None) -> list[BlackBoxCheck]:
    """Named checks, registered score/label attack names (linf where supported, else l2), or ready
    `BlackBoxCheck`s; None, "" or "none": no black-box section."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip() and n.strip().lower() != "none"]
    named = blackbox_checks()

    def lookup(name: str) -> BlackBoxCheck | None:
        if name in named:
            return named[name]
        if name in blackbox_names():
            cls = ATTACKS.get(name)
            norm = "linf" if "linf" in cls.norms else "l2"
            budget = next((p for p in _BUDGET_PARAMS if p in cls.param_names()), None)
            return BlackBoxCheck(name, name, {}, norm, name.upper(), budget)
        return None

    return _resolve("blackbox", names, BlackBoxCheck, lookup, lambda: [*blackbox_names(), "none"])


def resolve_budgets(budgets: Sequence[int | str] | str) -> list[int]:
    """Query budgets per image, sorted and deduplicated: integers >= 1 (comma-separated string or sequence)."""
    items = [b for b in budgets.split(",") if b.strip()] if isinstance(budgets, str) else list(budgets)
    values: set[int] = set()
    for b in items:
        try:
            value = int(str(b).strip()) if not isinstance(b, int) or isinstance(b, bool) else b
        except ValueError:
            value = 0
        if isinstance(b, bool) or value < 1 or (isinstance(b, float) and b != value):
            raise invalid(
                "query_budgets", b, "integers >= 1 (queries per image)", "e.g. 50,100,200,500,1000."
            )
        values.add(value)
    if not values:
        raise invalid("query_budgets", list(items), "at least one budget", "e.g. 50,100,200,500,1000.")
    return sorted(values)
