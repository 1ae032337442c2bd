"""Tests for ramparts.audit.profiles: the profiles, the TOML config file and the precedence of the layers."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from ramparts.audit import run_audit
from ramparts.audit.profiles import (
    DEFAULTS,
    KNOBS,
    PROFILES,
    build_checks,
    profile,
    resolve_settings,
    validate,
)
from ramparts.errors import RampartsTypeError, UnknownNameError, ValidationError


def _json(value: Any) -> Any:
    """run_audit's default in the profiles' JSON form (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_quick_is_run_audit_defaults() -> None:
    params = inspect.signature(run_audit).parameters
    quick = profile("quick")
    assert quick.pop("attack_params") == {}
    for key, value in quick.items():
        assert value == _json(params[key].default), key
    for key, value in DEFAULTS.items():
        if KNOBS[key].run_audit and key in params:
            assert value == _json(params[key].default), key


def test_every_knob_is_a_run_audit_keyword() -> None:
    params = inspect.signature(run_audit).parameters
    run_knobs = {k for k, knob in KNOBS.items() if knob.run_audit} - {"attack_params"}
    assert run_knobs <= set(params)
    assert set(DEFAULTS) == set(KNOBS)
    inputs = {"model", "train_ds", "test_ds", "out_dir", "progress", "model_info", "overwrite", "settings"}
    assert set(params) - inputs <= set(KNOBS)  # a new keyword of run_audit needs a knob


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_validate_and_build(name: str) -> None:
    values = profile(name)
    assert validate(values, source=name) == values
    checks = build_checks(values["attacks"], values["attack_params"])
    for check in checks:
        for param, value in values["attack_params"].get(check.key, {}).items():
            assert check.params[param] == value
    kwargs = resolve_settings(profile_name=name).run_kwargs()
    assert set(kwargs) <= set(inspect.signature(run_audit).parameters)


def test_profiles_grow_with_the_budget() -> None:
    quick, standard, thorough = profile("quick"), profile("standard"), profile("thorough")
    assert quick["n"] <= standard["n"] < thorough["n"]
    assert standard["theft_seeds"] > quick["theft_seeds"]
    assert thorough["membership_shadows"] > quick["membership_shadows"]
    assert len(thorough["poisoning_fractions"]) > len(quick["poisoning_fractions"])
    assert build_checks(thorough["attacks"], thorough["attack_params"])[-1].params["binary_search_steps"] == 9
    assert standard["poisoning_records"] > 0 == quick["poisoning_records"] == thorough["poisoning_records"]
    profile("standard")["n"] = 0
    assert profile("standard")["n"] == 500  # a copy each time


def test_unknown_profile_lists_the_profiles(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"profile.*quick, standard, thorough"):
        resolve_settings(profile_name="fast")
    with pytest.raises(UnknownNameError, match="quick, standard, thorough"):
        resolve_settings(config=_write(tmp_path, 'profile = "fast"\n'))


def test_config_unknown_key_names_it_and_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "nn = 5\n")
    with pytest.raises(UnknownNameError) as info:
        resolve_settings(config=path)
    message = str(info.value)
    assert "'nn'" in message
    assert str(path) in message
    for key in ("membership_shadows", "eps_grid", "attack_params", "fail_under"):
        assert key in message


@pytest.mark.parametrize(
    ("text", "error", "key"),
    [
        ('n = "500"\n', RampartsTypeError, "n (in"),
        ("encryption = 1\n", RampartsTypeError, "encryption (in"),
        ("seed = 1.5\n", RampartsTypeError, "seed (in"),
        ("bounds = [1.0, 0.0]\n", RampartsTypeError, "bounds (in"),
        ("eps_grid = [true]\n", RampartsTypeError, "eps_grid (in"),
        ("membership_shadows = -1\n", ValidationError, "membership_shadows (in"),
        ("attack_params = { pgd = 3 }\n", RampartsTypeError, "attack_params (in"),
    ],
)
def test_config_wrong_types_name_the_key(tmp_path: Path, text: str, error: type[Exception], key: str) -> None:
    with pytest.raises(error, match="expected") as info:
        resolve_settings(config=_write(tmp_path, text))
    assert key in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="config: expected a valid UTF-8 TOML file"):
        resolve_settings(config=_write(tmp_path, "n = = 3\n"))
    with pytest.raises(ValidationError, match="config: expected an existing TOML file"):
        resolve_settings(config=tmp_path / "missing.toml")


def test_precedence_profile_config_flags(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'profile = "standard"\nn = 123\nmembership_shadows = 2\neps_grid = "2/255, 4/255"\n'
        'blackbox = "none"\npoisoning_fractions = "0.01,0.05"\n[attack_params.pgd]\nsteps = 7\n',
    )
    settings = resolve_settings(config=path, flags={"membership_shadows": 5})
    values, sources = settings.values, settings.sources
    assert settings.profile == "standard"
    assert (values["n"], sources["n"]) == (123, "config")
    assert (values["membership_shadows"], sources["membership_shadows"]) == (5, "flag")
    assert (values["theft_seeds"], sources["theft_seeds"]) == (150, "profile")
    assert (values["seed"], sources["seed"]) == (0, "default")
    assert values["eps_grid"] == ["2/255", "4/255"]
    assert values["blackbox"] == []
    assert values["poisoning_fractions"] == [0.01, 0.05]
    # the config's attack_params replace the profile's as a whole
    assert values["attack_params"] == {"pgd": {"steps": 7}}
    pgd = next(c for c in settings.run_kwargs()["attacks"] if c.key == "pgd")
    assert pgd.params["steps"] == 7
    record = settings.to_dict()
    assert record["config_file"] == {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert record["flags"] == ["membership_shadows"]
    assert record["resolved"]["n"] == 123

    # --profile beats the file's profile; the file still beats the profile
    quick = resolve_settings(profile_name="quick", config=path)
    assert quick.profile == "quick"
    assert quick.values["theft_seeds"] == 50
    assert quick.values["n"] == 123


def test_attack_params_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"attack_params\.pgd: expected a hyperparameter of pgd"):
        build_checks(["pgd"], {"pgd": {"stepz": 3}})
    with pytest.raises(ValidationError, match="attack_params: expected an attack of the audit's battery"):
        build_checks(["fgsm"], {"pgd": {"steps": 3}})
    checks = build_checks(["fgsm", "apgd-dlr"], {"apgd-dlr": {"steps": 5}})
    assert checks[1].params == {"loss": "dlr", "steps": 5}
    assert checks[0].params == {}
