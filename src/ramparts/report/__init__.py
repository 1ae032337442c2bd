"""Findings -> one self-contained HTML file (plots embedded as base64 PNG) and a JSON file."""

from ramparts.report.html import render_html, write_html
from ramparts.report.json import to_jsonable, write_json

__all__ = ["render_html", "to_jsonable", "write_html", "write_json"]
