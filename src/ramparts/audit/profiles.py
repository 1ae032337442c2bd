"""Audit profiles, the TOML config file, and how they resolve into `run_audit`'s keyword arguments.

A profile is a named set of budgets; a config file (TOML) can set every knob; flags given on the command
line win. Precedence: `run_audit`'s defaults < profile < config file < explicit flags. The resolved
settings (profile, config file path and sha256, every value and where it came from) go to report.json
under "settings", so the run can be repeated exactly.

Profiles (only budgets: the threat model, seed and bounds are the same in all three):

| knob                  | quick          | standard        | thorough               | reason |
|-----------------------|----------------|-----------------|------------------------|--------|
| n                     | 500            | 500             | 10000                  | quick: all of the digits' 449 held-out images; standard: +-4.4 points (95%) at 50% robust accuracy, what 20 minutes on 2 cores allow next to the retraining sections; thorough: MNIST's whole test split |
| eps_grid              | 2..80/255 (9)  | same            | same                   | a threat-model choice, not a budget; 80/255 covers MNIST's 0.3 |
| attacks               | the battery    | same            | same                   | FGSM, BIM, PGD, APGD-CE, APGD-DLR, C&W-L2 (AutoAttack's pair plus the classics) |
| attack_params         | none           | none            | PGD 100 steps x 5 restarts, APGD 100 steps x 5 restarts, C&W 1000 x 9 | the battery's own budgets (APGD 50 steps) in quick and standard; thorough: AutoAttack's 100 APGD steps (Croce & Hein 2020), Madry et al.'s restarts and Carlini & Wagner's 9 binary-search steps |
| blackbox              | Square, HSJ    | same            | same                   | one score-based and one label-only attack |
| query_budgets         | 50..1000       | same            | 100..10000             | each budget reruns both attacks on the images still standing; thorough: Square's 10,000 queries (Andriushchenko et al. 2020) |
| blackbox_n            | 100            | 100             | 1000                   | black-box queries dominate the cost on a CPU |
| theft_seeds           | 50             | 150             | 150                    | Papernot et al. 2017 start from 150 held-out MNIST images |
| membership_shadows    | 8              | 4               | 64                     | each shadow retrains on half of train+test (35,000 MNIST records), the largest CPU cost; LiRA's plots use 64+ (Carlini et al. 2022) |
| poisoning_fractions   | 0.01, 0.05     | 0.05            | 0.001, 0.01, 0.05, 0.1 | each fraction retrains the recipe twice |
| poisoning_records     | all            | 5,000           | all                    | the poisoning section retrains five models: on 5,000 of MNIST's 60,000 records each takes ~12 s instead of ~85 s on 2 cores |
| epochs                | 10             | 1               | 10                     | the recipe of the default model, shadows and poisoned retrains; one MNIST epoch (60,000 images) already reaches ~98% |
| encryption_queries    | 3              | 3               | 10                     | single encrypted queries are timed one by one |
| defense_steps         | 50             | 100             | 200                    | adaptive PGD against a defended model (Athalye et al. 2018) |
| defense_eot_samples   | 8              | 8               | 32                     | EOT draws per step for a random defence |
| defense_votes         | 5              | 5               | 11                     | majority vote of a random defence's answer |

`quick` is `run_audit`'s defaults (what `make demo` runs: ~90 s on the digits, 2 CPU cores). `standard`
is for the MNIST CNN on 2 CPU cores in 20 minutes (measured: benchmarks/RESULTS.md). With n = 500, APGD at
100 steps and poisoning on 10,000 records it took 24.6 minutes (white-box battery 9, membership 8.5); with the
battery's own budgets 20.0 minutes; with poisoning on 5,000 records 19.4 minutes.
`thorough` is for one GPU.

Config file keys are `run_audit`'s keyword names (see `KNOBS`), plus `profile`, `attack_params` (a table of
hyperparameters per attack of the battery, e.g. `[attack_params.pgd] steps = 100`), `fail_under` (gate
clauses, see `ramparts.audit.gate`) and the command's inputs `model`, `data`, `out` (read relative to the
working directory, like the flags).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramparts.audit.checks import (
    DEFAULT_BLACKBOX,
    DEFAULT_BLACKBOX_L2_EPS,
    DEFAULT_BLACKBOX_N,
    DEFAULT_CHECKS,
    DEFAULT_EPS_GRID,
    DEFAULT_N,
    DEFAULT_QUERY_BUDGETS,
    DEFAULT_REFERENCE_EPS,
    Check,
    resolve_checks,
)
from ramparts.audit.defense import DEFAULT_EOT_SAMPLES, DEFAULT_STEPS, DEFAULT_VOTES
from ramparts.audit.encryption import DEFAULT_QUERIES
from ramparts.audit.membership import DEFAULT_SHADOWS
from ramparts.audit.model import DEFAULT_EPOCHS, RECIPE_MODES
from ramparts.audit.poisoning import DEFAULT_FRACTIONS
from ramparts.audit.theft import DEFAULT_THEFT, DEFAULT_THEFT_SEEDS
from ramparts.errors import RampartsTypeError, invalid, unknown
from ramparts.evasion import ATTACKS

DEFAULT_PROFILE = "quick"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _comma(value: Any) -> list[Any]:
    """A comma-separated string or a list -> a list of stripped items (strings) or the list's items."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _none_words(items: list[Any]) -> list[Any]:
    """`["none"]`, `["0"]` -> [] (the section is skipped)."""
    return [] if [str(i).lower() for i in items] in (["none"], ["0"]) else items


@dataclass(frozen=True)
class Knob:
    """One setting: what it accepts (`accepts` checks the raw value, `normalize` gives its JSON form)."""

    expected: str
    accepts: Callable[[Any], bool]
    normalize: Callable[[Any], Any] = field(default=lambda v: v)
    minimum: int | None = None
    run_audit: bool = True


def _int_knob(minimum: int) -> Knob:
    return Knob(f"an integer >= {minimum}", _is_int, minimum=minimum)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) or (isinstance(v, list | tuple) and all(check(i) for i in v))


def _eps_item(v: Any) -> bool:
    return isinstance(v, str) or _is_number(v)


def _attack_params(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(p, Mapping) and all(isinstance(n, str) for n in p)
        for k, p in value.items()
    )


def _budget(v: Any) -> Any:
    return int(v) if isinstance(v, str) and v.strip().isdigit() else v


def _fraction_list(v: Any) -> list[Any]:
    items = _none_words(_comma(v))
    out: list[Any] = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            out.append(item)  # run_audit names the bad value
    return out


KNOBS: dict[str, Knob] = {
    "eps_grid": Knob(
        "linf budgets: a list or comma string of numbers, fractions (8/255) or pixel levels (5px)",
        _list_of(_eps_item),
        _comma,
    ),
    "attacks": Knob("attack names: a list or a comma string", _list_of(lambda v: isinstance(v, str)), _comma),
    "attack_params": Knob(
        "a table of hyperparameter tables per attack, e.g. [attack_params.pgd] steps = 100",
        _attack_params,
        lambda v: {str(k): dict(p) for k, p in v.items()},
    ),
    "n": _int_knob(1),
    "seed": _int_knob(0),
    "reference_eps": Knob("a linf budget (number, 8/255 or 5px)", _eps_item),
    "epochs": _int_knob(1),
    "bounds": Knob(
        "[low, high] numbers with low < high",
        lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(_is_number(i) for i in v) and v[0] < v[1]
        ),
        lambda v: [float(v[0]), float(v[1])],
    ),
    "blackbox": Knob(
        "black-box attack names (a list or comma string), or 'none'",
        _list_of(lambda v: isinstance(v, str)),
        lambda v: _none_words(_comma(v)),
    ),
    "query_budgets": Knob(
        "query budgets per image: a list or comma string of integers",
        _list_of(lambda v: _is_int(v) or isinstance(v, str)),
        lambda v: [_budget(b) for b in _comma(v)],
    ),
    "blackbox_n": _int_knob(1),
    "blackbox_l2_eps": Knob("an L2 budget (number or fraction)", _eps_item),
    "theft": Knob("a theft attack name or 'none'", lambda v: isinstance(v, str)),
    "theft_seeds": _int_knob(1),
    "membership_shadows": _int_knob(0),
    "poisoning_fractions": Knob(
        "shares of the training set in (0, 0.5): a list or comma string, or 'none'",
        _list_of(lambda v: _is_number(v) or isinstance(v, str)),
        _fraction_list,
    ),
    "poisoning_records": _int_knob(0),
    "encryption": Knob("true or false", lambda v: isinstance(v, bool)),
    "encryption_queries": _int_knob(1),
    "defense_steps": _int_knob(0),
    "defense_eot_samples": _int_knob(1),
    "defense_votes": _int_knob(1),
    "recipe": Knob(
        "what membership and poisoning retrain: 'auto', 'default' or a zoo architecture",
        lambda v: isinstance(v, str),
    ),
    "fail_under": Knob(
        "gate clauses: a string, a list of strings, or an accuracy in [0, 1]",
        lambda v: (
            isinstance(v, str) or _is_number(v) or _list_of(lambda i: isinstance(i, str) or _is_number(i))(v)
        ),
        lambda v: [str(i) for i in ([v] if isinstance(v, str | int | float) else v)],
        run_audit=False,
    ),
    "model": Knob("a model path (string)", lambda v: isinstance(v, str), run_audit=False),
    "data": Knob("a dataset spec (string)", lambda v: isinstance(v, str), run_audit=False),
    "out": Knob("a run folder path (string)", lambda v: isinstance(v, str), run_audit=False),
}

# `run_audit`'s defaults in their JSON form: the bottom layer of every resolution.
DEFAULTS: dict[str, Any] = {
    "eps_grid": list(DEFAULT_EPS_GRID),
    "attacks": list(DEFAULT_CHECKS),
    "attack_params": {},
    "n": DEFAULT_N,
    "seed": 0,
    "reference_eps": DEFAULT_REFERENCE_EPS,
    "epochs": DEFAULT_EPOCHS,
    "bounds": [0.0, 1.0],
    "blackbox": list(DEFAULT_BLACKBOX),
    "query_budgets": list(DEFAULT_QUERY_BUDGETS),
    "blackbox_n": DEFAULT_BLACKBOX_N,
    "blackbox_l2_eps": DEFAULT_BLACKBOX_L2_EPS,
    "theft": DEFAULT_THEFT,
    "theft_seeds": DEFAULT_THEFT_SEEDS,
    "membership_shadows": DEFAULT_SHADOWS,
    "poisoning_fractions": list(DEFAULT_FRACTIONS),
    "poisoning_records": 0,
    "encryption": True,
    "encryption_queries": DEFAULT_QUERIES,
    "defense_steps": DEFAULT_STEPS,
    "defense_eot_samples": DEFAULT_EOT_SAMPLES,
    "defense_votes": DEFAULT_VOTES,
    "recipe": RECIPE_MODES[0],
    "fail_under": [],
    "model": None,
    "data": None,
    "out": None,
}

# The budget knobs a profile sets (the module docstring's table gives each value's reason).
_BUDGETS = (
    "n",
    "eps_grid",
    "attacks",
    "attack_params",
    "blackbox",
    "query_budgets",
    "blackbox_n",
    "theft_seeds",
    "membership_shadows",
    "poisoning_fractions",
    "poisoning_records",
    "epochs",
    "encryption_queries",
    "defense_steps",
    "defense_eot_samples",
    "defense_votes",
)

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {key: DEFAULTS[key] for key in _BUDGETS},
    "standard": {
        **{key: DEFAULTS[key] for key in _BUDGETS},
        "n": 500,
        "theft_seeds": 150,
        "membership_shadows": 4,
        "poisoning_fractions": [0.05],
        "poisoning_records": 5000,
        "epochs": 1,
        "defense_steps": 100,
    },
    "thorough": {
        **{key: DEFAULTS[key] for key in _BUDGETS},
        "n": 10000,
        "attack_params": {
            "pgd": {"steps": 100, "restarts": 5},
            "apgd-ce": {"steps": 100, "restarts": 5},
            "apgd-dlr": {"steps": 100, "restarts": 5},
            "cw": {"steps": 1000, "binary_search_steps": 9},
        },
        "query_budgets": [100, 500, 1000, 5000, 10000],
        "blackbox_n": 1000,
        "theft_seeds": 150,
        "membership_shadows": 64,
        "poisoning_fractions": [0.001, 0.01, 0.05, 0.1],
        "encryption_queries": 10,
        "defense_steps": 200,
        "defense_eot_samples": 32,
        "defense_votes": 11,
    },
}


def profile(name: str) -> dict[str, Any]:
    """A copy of the named profile's settings (`run_audit` keywords in their JSON form)."""
    if not isinstance(name, str) or name.strip().lower() not in PROFILES:
        raise unknown("profile", name, PROFILES)
    return {k: _copy(v) for k, v in PROFILES[name.strip().lower()].items()}


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    return list(value) if isinstance(value, list | tuple) else value


def validate(values: Mapping[str, Any], *, source: str = "settings") -> dict[str, Any]:
    """`values` checked against `KNOBS` and normalised to their JSON form.

    An unknown key is an error listing the valid ones; a value of the wrong type names its key and `source`.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        knob = KNOBS.get(key)
        if knob is None:
            raise unknown(f"{source}: key", key, KNOBS)
        where = f"{key} (in {source})"
        if not knob.accepts(value):
            raise invalid(where, value, knob.expected, cls=RampartsTypeError)
        if knob.minimum is not None and value < knob.minimum:
            raise invalid(where, value, knob.expected)
        out[key] = knob.normalize(value)
    return out


def load_config(path: str | Path) -> tuple[dict[str, Any], str | None, str]:
    """(validated settings, the profile it names or None, the file's sha256) of a TOML config file."""
    file = Path(path)
    if not file.is_file():
        raise invalid("config", str(path), "an existing TOML file", "check the path given to --config.")
    raw = file.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise invalid("config", str(path), "a valid UTF-8 TOML file", f"{exc}.") from None
    name = data.pop("profile", None)
    if name is not None and (not isinstance(name, str) or name.strip().lower() not in PROFILES):
        raise unknown(f"profile (in {file})", name, PROFILES)
    return validate(data, source=str(file)), name, hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class AuditSettings:
    """Resolved settings of one audit: every knob's value and the layer it came from.

    `sources[key]` is one of "default", "profile", "config", "flag".
    """

    profile: str
    values: dict[str, Any]
    sources: dict[str, str]
    config_path: Path | None = None
    config_sha256: str | None = None

    def run_kwargs(self) -> dict[str, Any]:
        """`run_audit`'s keyword arguments (the battery's `Check`s carry `attack_params`)."""
        kwargs = {k: v for k, v in self.values.items() if KNOBS[k].run_audit and k != "attack_params"}
        kwargs["attacks"] = build_checks(self.values["attacks"], self.values["attack_params"])
        kwargs["bounds"] = tuple(self.values["bounds"])
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """report.json's "settings": enough to repeat the run exactly."""
        return {
            "profile": self.profile,
            "config_file": None
            if self.config_path is None
            else {"path": str(self.config_path), "sha256": self.config_sha256},
            "flags": sorted(k for k, s in self.sources.items() if s == "flag"),
            "resolved": _copy(self.values),
            "sources": dict(self.sources),
        }


def build_checks(attacks: list[str], params: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    """The battery's checks for `attacks`, with `params` overriding each named check's hyperparameters."""
    checks = resolve_checks(attacks)
    keys = [c.key for c in checks]
    for key, given in params.items():
        if key not in keys:
            raise invalid(
                "attack_params",
                key,
                f"an attack of the audit's battery: {', '.join(keys)}",
                "add it to attacks.",
            )
        allowed = ATTACKS.get(checks[keys.index(key)].attack).param_names()
        for name in given:
            if name not in allowed:
                raise invalid(
                    f"attack_params.{key}", name, f"a hyperparameter of {key}: {', '.join(allowed)}"
                )
    return [
        dataclasses.replace(c, params={**c.params, **params[c.key]}) if c.key in params else c for c in checks
    ]


def resolve_settings(
    *,
    profile_name: str | None = None,
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
) -> AuditSettings:
    """Resolve defaults < profile < config file < flags (only the flags given: leave the others out).

    The profile is `profile_name` if given, else the config file's `profile`, else `quick`.
    """
    from_file, file_profile, sha = load_config(config) if config is not None else ({}, None, None)
    given = validate(flags or {}, source="flags")
    name = (profile_name or file_profile or DEFAULT_PROFILE).strip().lower()
    layers = (("profile", profile(name)), ("config", from_file), ("flag", given))
    values = {k: _copy(v) for k, v in DEFAULTS.items()}
    sources = dict.fromkeys(DEFAULTS, "default")
    for layer, settings in layers:
        for key, value in settings.items():
            values[key] = value
            sources[key] = layer
    return AuditSettings(
        profile=name,
        values=values,
        sources=sources,
        config_path=Path(config).resolve() if config is not None else None,
        config_sha256=sha,
    )
