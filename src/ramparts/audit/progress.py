"""The audit's progress display: one bar per section, each with its own time left, under an overall bar.

The plan (section -> number of steps) is known before any compute, so the overall bar's estimate covers
the whole audit; a section's bar appears when the section starts and shows what it is doing now. Steps
are the units a section already records (an eps of a sweep, a query budget, a retrained model), so
the estimate follows the real work. Disabled (no output) when stderr is not a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ramparts.errors import invalid


class AuditProgress:
    """Section bars and an overall bar for one audit; `plan` maps each section to its step count."""

    def __init__(
        self, plan: Mapping[str, int], *, enabled: bool = True, console: Console | None = None
    ) -> None:
        for name, steps in plan.items():
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise invalid(f"plan[{name!r}]", steps, "a step count >= 0")
        self.plan = {name: steps for name, steps in plan.items() if steps > 0}
        console = console or Console(stderr=True)
        self._bar = Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
            transient=False,
        )
        self._overall = self._bar.add_task("audit", total=sum(self.plan.values()))
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None
        # Steps each section reported itself (the bar is completed when the next section starts).
        self.counted: dict[str, int] = {}

    def __enter__(self) -> AuditProgress:
        self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def section(self, name: str) -> None:
        """Start section `name` of the plan: the previous section's bar is completed, a new one appears."""
        if name not in self.plan:
            raise invalid("section", name, f"a section of the plan: {', '.join(self.plan) or 'none'}")
        self._finish()
        self._current = name
        self.counted[name] = 0
        self._tasks[name] = self._bar.add_task(name, total=self.plan[name])

    def status(self, text: str) -> None:
        """What the current section is doing (shown on its bar)."""
        if self._current is not None:
            self._bar.update(self._tasks[self._current], description=f"{self._current}: {text}")

    def advance(self, steps: int = 1) -> None:
        """`steps` more steps of the current section done."""
        if self._current is None:
            return
        self.counted[self._current] += steps
        self._fill(steps)

    def _fill(self, steps: int) -> None:
        assert self._current is not None
        task = self._tasks[self._current]
        left = self.plan[self._current] - self.completed(self._current)
        done = max(0, min(steps, left))
        self._bar.advance(task, done)
        self._bar.advance(self._overall, done)

    def completed(self, name: str) -> int:
        """Steps of section `name` done so far (0 before it starts)."""
        task = self._tasks.get(name)
        return 0 if task is None else int(next(t.completed for t in self._bar.tasks if t.id == task))

    def _finish(self) -> None:
        if self._current is not None:
            self._fill(self.plan[self._current])
            self._bar.update(self._tasks[self._current], description=self._current)

    def close(self) -> None:
        """Complete the last section's bar (the audit is done)."""
        self._finish()
        self._current = None
