"""`ramparts serve` as a child process: started from a configuration file, ready once /healthz answers.

For scripts and integration tests that need a real server (its own process, SIGTERM and SIGKILL, a
restart on the same database) rather than the in-process app of `create_app`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from ramparts.errors import RampartsError
from ramparts.gateway.config import load_config


class ServeError(RampartsError, RuntimeError):
    """The server exited, or did not answer /healthz in time; the message holds its output."""


def serve_command() -> list[str]:
    """The `ramparts` entry point of this Python environment (the console script beside the interpreter,
    else the one on PATH)."""
    beside = Path(sys.executable).with_name("ramparts")
    found = str(beside) if beside.is_file() else shutil.which("ramparts")
    if found is None:
        raise ServeError("no `ramparts` command next to this Python or on PATH. Fix: pip install ramparts.")
    return [found]


@dataclass
class ServeProcess:
    """One `ramparts serve` process, its base URL and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    url: str
    output: Path

    @classmethod
    def start(
        cls,
        config: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        wait_s: float = 90.0,
    ) -> Self:
        """Start `ramparts serve --config CONFIG` in `workdir` with `env` (default: this environment) and
        wait until /healthz answers 200; raises `ServeError` with the server's output if it exits first
        or `wait_s` passes (the process is then stopped)."""
        environ = dict(os.environ if env is None else env)
        settings = load_config(config, env=environ, check_model=False)
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        output = Path(workdir) / f"serve-{settings.port}-{time.monotonic_ns()}.log"
        with output.open("wb") as sink:
            proc = subprocess.Popen(
                [*serve_command(), "serve", "--config", os.fspath(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=workdir,
            )
        server = cls(proc, f"http://{host}:{settings.port}", output)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServeError(f"ramparts serve exited with {proc.returncode}:\n{server.text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/healthz", timeout=2.0).status_code == 200:
                    return server
            time.sleep(0.2)
        server.stop()
        raise ServeError(f"ramparts serve did not answer /healthz in {wait_s:g} s:\n{server.text()}")

    def text(self) -> str:
        """Everything the server has written so far."""
        return self.output.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the server finishes its requests and closes the database), SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
