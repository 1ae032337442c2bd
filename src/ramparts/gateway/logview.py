"""What `ramparts gateway log` shows: a summary per key and the last requests, from the database alone."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ramparts.gateway.store import Store


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def summarize(store: Store, *, key: str | None = None, last: int = 20) -> dict[str, Any]:
    """`{"keys": [per-key summary], "requests": [the last `last` log rows, oldest first]}`.

    A key's summary: state, output mode, budget and rows used, requests (all log rows) and rows answered
    (status 200), counts by status and decision, alarms (log rows with a PRADA alarm), when it was first
    alarmed and blocked, latency p50/p99 of answered requests, and its PRADA figures as last committed."""
    keys = [store.key_by_name(key)] if key is not None else store.keys()
    wanted = {k.id for k in keys}
    stats = store.prada_stats()
    per_key: dict[int, dict[str, Any]] = {
        k.id: {
            "statuses": Counter(),
            "decisions": Counter(),
            "requests": 0,
            "rows": 0,
            "alarms": 0,
            "first_alarm_at": None,
            "latency": [],
        }
        for k in keys
    }
    for key_id, status, decision, rows, alarm, latency, when in store.log_stats():
        if key_id not in wanted:
            continue
        entry = per_key[key_id]
        entry["requests"] += 1
        entry["statuses"][str(status)] += 1
        if decision is not None:
            entry["decisions"][decision] += 1
        if status == 200:
            entry["rows"] += rows
            if latency is not None:
                entry["latency"].append(latency)
        if alarm:
            entry["alarms"] += 1
            if entry["first_alarm_at"] is None:
                entry["first_alarm_at"] = when
    summaries = []
    for k in keys:
        entry = per_key[k.id]
        summaries.append(
            {
                "name": k.name,
                "state": k.state,
                "output": k.output,
                "budget": k.budget,
                "used": k.used,
                "requests": entry["requests"],
                "rows": entry["rows"],
                "statuses": dict(entry["statuses"]),
                "decisions": dict(entry["decisions"]),
                "alarms": entry["alarms"],
                "first_alarm_at": entry["first_alarm_at"],
                "blocked_at": k.blocked_at,
                "reason": k.reason,
                "latency_ms_p50": _percentile(entry["latency"], 50),
                "latency_ms_p99": _percentile(entry["latency"], 99),
                "prada": stats.get(k.id),
            }
        )
    return {"keys": summaries, "requests": store.log_rows(key=key, last=last)}


__all__ = ["summarize"]
