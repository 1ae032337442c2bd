"""The audit's progress display: per-section bars whose step counts are what the sections really do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import ramparts.audit.run
from ramparts.audit import run_audit
from ramparts.audit.progress import AuditProgress
from ramparts.errors import ValidationError


def test_sections_complete_in_order_and_feed_the_overall_bar() -> None:
    bars = AuditProgress({"a": 3, "b": 0, "c": 2}, enabled=False)
    assert bars.plan == {"a": 3, "c": 2}, "empty sections get no bar"
    with bars:
        bars.section("a")
        bars.status("eps=8/255")
        bars.advance()
        assert bars.completed("a") == 1
        bars.advance(5)
        assert bars.completed("a") == 3, "a section never runs past its plan"
        bars.section("c")
        assert bars.completed("c") == 0
        bars.close()
        assert bars.completed("c") == 2
    assert bars.counted == {"a": 6, "c": 0}


def test_an_unknown_section_or_a_bad_plan_is_refused() -> None:
    with pytest.raises(ValidationError, match="section"):
        AuditProgress({"a": 1}, enabled=False).section("b")
    with pytest.raises(ValidationError, match=r"plan\['a'\]"):
        AuditProgress({"a": -1}, enabled=False)


def test_a_terminal_shows_one_bar_per_section_with_time_left(tmp_path: Path) -> None:
    console = Console(file=open(tmp_path / "out.txt", "w"), force_terminal=True, width=120)  # noqa: SIM115
    with AuditProgress({"white-box": 2, "theft": 2}, console=console) as bars:
        bars.section("white-box")
        bars.status("FGSM eps=2/255")
        bars.advance(2)
        bars.section("theft")
        bars.advance()
        bars.close()
    console.file.close()
    text = (tmp_path / "out.txt").read_text()
    for line in ("audit", "white-box", "theft", "left"):
        assert line in text


def test_every_section_counts_the_steps_it_planned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A whole audit with each section switched on: the ticks each section gave equal its plan, so the
    time left is estimated from real steps (a section that ticks too little or too much fails here)."""
    seen: list[AuditProgress] = []

    class Recording(AuditProgress):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self)

    monkeypatch.setattr(ramparts.audit.run, "AuditProgress", Recording)
    run_audit(
        out_dir=tmp_path,
        eps_grid="0.1,0.3",
        attacks="fgsm,pgd,cw",
        n=30,
        epochs=1,
        reference_eps=0.1,
        query_budgets="20,50",
        blackbox_n=8,
        theft_seeds=20,
        membership_shadows=2,
        poisoning_fractions=(0.1,),
        encryption_queries=1,
    )
    (bars,) = seen
    assert set(bars.plan) == {
        "training",
        "white-box",
        "black-box",
        "theft",
        "membership",
        "poisoning",
        "encryption",
        "report",
    }
    assert bars.plan["white-box"] == 2 * 2 + 1
    assert bars.plan["membership"] == 2 + 3
    assert bars.plan["poisoning"] == 1 + 2 + 2
    assert {k: v for k, v in bars.counted.items() if k != "report"} == {
        k: v for k, v in bars.plan.items() if k != "report"
    }
