"""Waiting in tests for a condition, polled up to a deadline (never a fixed sleep standing in for it)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def poll_until(predicate: Callable[[], object], timeout_s: float, interval: float = 0.1) -> bool:
    """True as soon as ``predicate()`` is true; False once ``timeout_s`` passed without it."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    log: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Return once ``predicate()`` is true; fail after ``timeout_s`` or when ``proc`` exited, with the
    end of ``log`` in the message."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}".rstrip())
