"""report.html: one self-contained file (CSS inline, figures as base64 PNG), rendered with autoescape on."""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ramparts.report.methodology import methodology
from ramparts.report.plots import data_uri

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
# scorecard threat -> the id of its section in the page
ANCHORS = {
    "evasion_whitebox": "evasion",
    "evasion_blackbox": "blackbox",
    "theft": "theft",
    "membership": "membership",
    "poisoning": "poisoning",
    "encryption": "encryption",
    "defense": "defense",
}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * float(value):.{digits}f}%"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"
    return str(value)


def accuracy_table(report: Mapping[str, Any]) -> dict[str, Any]:
    """Rows = eps, columns = attacks (in the battery's order), plus the worst case per eps."""
    evasion = report.get("evasion", {})
    findings = evasion.get("findings", [])
    columns: list[str] = []
    for f in findings:
        if f["label"] not in columns:
            columns.append(f["label"])
    rows = []
    for w in evasion.get("worst_case", []):
        values = {f["label"]: f["robust_accuracy"] for f in findings if f["eps"] == w["eps"]}
        rows.append(
            {
                "eps": w["eps"],
                "eps_label": w["eps_label"],
                "values": [values.get(c) for c in columns],
                "worst": w["robust_accuracy"],
                "reference": math.isclose(
                    w["eps"], report.get("reference", {}).get("eps", -1.0), abs_tol=1e-12
                ),
            }
        )
    return {"columns": columns, "rows": rows}


def blackbox_table(report: Mapping[str, Any]) -> dict[str, Any]:
    """Rows = query budgets, columns = the black-box attacks: the share of attacked images fooled."""
    black = (report.get("blackbox") or {}).get("checks", {})
    columns = [s["label"] for s in black.values()]
    budgets = sorted({r["budget"] for s in black.values() for r in s["rows"]})
    rows = []
    for budget in budgets:
        cells = []
        for s in black.values():
            row = next((r for r in s["rows"] if r["budget"] == budget), None)
            cells.append(None if row is None else row)
        rows.append({"budget": budget, "cells": cells})
    return {"columns": columns, "rows": rows, "sections": list(black.values())}


def render_html(report: Mapping[str, Any], figures: Mapping[str, bytes] | None = None) -> str:
    """The report page for `report` (the dict of report.json) with `figures` (name -> PNG bytes) inlined: its
    `scorecard` at the top, each section with its `recommendations`, the methodology at the end."""
    images = {name: data_uri(png) for name, png in (figures or {}).items()}
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            r=report,
            fig=images,
            table=accuracy_table(report),
            bbtable=blackbox_table(report),
            card=report.get("scorecard") or [],
            advice=report.get("recommendations") or {},
            method=methodology(report),
            anchors=ANCHORS,
            generated=generated,
        )
    )


def write_html(
    report: Mapping[str, Any], figures: Mapping[str, bytes] | None, path: str | os.PathLike[str]
) -> Path:
    """Render and write report.html."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(render_html(report, figures), encoding="utf-8")
    return file
