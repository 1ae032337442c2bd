"""The audit's report.html opened in a real headless Chromium (issue 9, "Tested in a real browser").

The browser is Debian's `/usr/bin/chromium` (or `$RAMPARTS_CHROMIUM`), driven by Playwright through its
executable path, so no browser build is downloaded. Where the browser or Playwright is missing the test
skips with the reason; `.ci/run` installs both so that CI always runs it. The full-page screenshot goes to
`$RAMPARTS_TEST_ARTIFACTS` (default `tests/artifacts/`, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ramparts.audit import BlackBoxCheck, Check, run_audit
from ramparts.data import load_digits

CHROMIUM = os.environ.get("RAMPARTS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RAMPARTS_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
# The evasion, black-box and theft sections (figures, the example panel), on budgets of a few seconds on one thread;
# the sections that retrain (membership, poisoning) or encrypt add minutes and are off.
TINY: dict[str, Any] = {
    "eps_grid": (0.05, 0.1, 0.2),
    "attacks": [Check("fgsm", "fgsm", {}, "linf", "FGSM"), Check("pgd", "pgd", {"steps": 5}, "linf", "PGD")],
    "n": 24,
    "seed": 0,
    "reference_eps": 0.1,
    "blackbox": [BlackBoxCheck("square", "square", {}, "linf", "Square", "n_queries")],
    "query_budgets": (10, 30),
    "blackbox_n": 8,
    "theft_seeds": 30,
    "membership_shadows": 0,
    "poisoning_fractions": None,
    "encryption": False,
}


@pytest.fixture(scope="module")
def launch() -> Any:
    """Playwright's `sync_playwright`, or a skip that says what is missing and how to get it.

    With `RAMPARTS_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs both) a missing piece fails instead."""
    missing = pytest.fail if os.environ.get("RAMPARTS_REQUIRE_BROWSER") == "1" else pytest.skip
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or set RAMPARTS_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed: `pip install -e '.[dev]'`")
    return sync_playwright


@pytest.fixture(scope="module")
def report_html(digits_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    held_out = load_digits().subset(range(1400, 1797))
    out = tmp_path_factory.mktemp("browser_audit")
    report = run_audit(digits_model.model, None, held_out, out_dir=out, **TINY)
    assert report.out_dir is not None
    return report.out_dir / "report.html"


@dataclass(frozen=True)
class Rendered:
    """What the browser saw: console and page errors, every <img>, the scorecard, the screenshot."""

    errors: list[str]
    images: list[dict[str, Any]]
    has_scorecard: bool
    screenshot: Path


def _render(sync_playwright: Any, html: Path, screenshot: Path) -> Rendered:
    """Open `html` by file:// in headless Chromium and record what the tests check."""
    errors: list[str] = []
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(html.as_uri(), wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images, i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
            )
            has_scorecard = page.locator("#scorecard").count() > 0
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return Rendered(errors, images, has_scorecard, screenshot)


def _broken(images: list[dict[str, Any]]) -> list[str]:
    return [i["alt"] or f"image {k}" for k, i in enumerate(images) if not i["complete"] or i["width"] <= 0]


@pytest.fixture(scope="module")
def rendered(launch: Any, report_html: Path) -> Rendered:
    """The audit's report as the browser saw it; the page and its screenshot are kept as artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(report_html, ARTIFACTS / "report_browser.html")
    return _render(launch, report_html, ARTIFACTS / "report_browser.png")


def test_checks_catch_a_broken_page(launch: Any, tmp_path: Path) -> None:
    """The harness itself: a script error, a console error and a missing image are all caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><body><img alt='missing' src='nope.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    seen = _render(launch, page, tmp_path / "broken.png")
    assert any("boom" in e for e in seen.errors)
    assert any(e.startswith("page error:") and "undefinedFunction" in e for e in seen.errors)
    assert _broken(seen.images) == ["missing"]
    assert not seen.has_scorecard


def test_no_console_or_page_errors(rendered: Rendered) -> None:
    assert rendered.errors == []


def test_every_image_loaded(rendered: Rendered) -> None:
    assert len(rendered.images) >= 3, f"expected the report's figures, found {len(rendered.images)} <img>"
    broken = _broken(rendered.images)
    assert broken == [], f"images that did not load: {broken}"


def test_screenshot_written(rendered: Rendered) -> None:
    assert rendered.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rendered.screenshot.stat().st_size > 10_000


def test_scorecard_present(rendered: Rendered) -> None:
    """The scorecard of issue 9 (`<section id="scorecard">`, one row per threat) is on the page."""
    assert rendered.has_scorecard, (
        'report.html has no element with id="scorecard" (the scorecard of issue 9 is missing)'
    )
