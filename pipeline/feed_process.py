"""The scorer's ``EventFeed`` run in a child process, so fetching and scoring use two cores.

kafka-python's fetch path is pure Python (~8 µs/event): it holds the GIL, so a fetch *thread*
cannot overlap with scoring. ``FetchProcess`` starts a child (spawn; it imports no torch) that owns
the consumer and sends each ``Batch`` through a pipe while the parent scores the previous one.

Protocol (pickled tuples over one duplex ``multiprocessing`` pipe):

* child -> parent: ``("items", [Rebalance | Batch, ...], lag or None, commits so far)``; ``("revoking",)`` when a
  rebalance is about to take partitions; ``("error", text)``; ``("closed", commits)`` on exit.
* parent -> child: ``("done", {tp: offset})`` once a batch's outputs are acknowledged (the child
  commits them); ``("revoke_ack",)`` answers ``"revoking"`` (the parent reads the pipe only
  between batches, so every batch sent before it is scored and acknowledged by then);
  ``("stop",)``.

At-least-once holds as in-process: the child commits only offsets the parent acknowledged; on a
rebalance it commits them *before* giving partitions up (fewer re-reads); on ``stop`` it commits
what was acknowledged and closes; batches sent but not acknowledged are left uncommitted. If the
parent dies (``kill -9``), the child dies with it (``PR_SET_PDEATHSIG``, and a broken pipe) without
committing anything more; if the child dies, the parent's ``poll`` raises ``FetchProcessDied``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time

from pipeline.feed import Batch

log = logging.getLogger(__name__)
_REVOKE_WAIT_S = 120.0


class FetchProcessDied(RuntimeError):
    """The fetch process exited or failed; the scorer stops (uncommitted batches are re-read)."""


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(conn, kafka, replay_messages: int, poll_timeout_ms: int, parent_pid: int, log_level: int) -> None:
    """(child) Poll, send batches, commit what the parent acknowledged."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[fetch]: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, log_level))
    from pipeline.feed import EventFeed

    acked: dict = {}
    stopping = False

    def read(message) -> str:
        nonlocal stopping
        kind = message[0]
        if kind == "done":
            acked.update(message[1])  # later batches carry larger offsets
        elif kind == "stop":
            stopping = True
        return kind

    def before_revoke(_revoked) -> None:
        conn.send(("revoking",))
        deadline = time.monotonic() + _REVOKE_WAIT_S
        while time.monotonic() < deadline and not stopping:
            if conn.poll(0.1) and read(conn.recv()) == "revoke_ack":
                break
        flush(sync=True)

    def flush(sync: bool) -> None:
        if acked:
            feed.commit(dict(acked), sync=sync)
            acked.clear()

    feed = None
    try:
        feed = EventFeed(kafka, replay_messages=replay_messages, poll_timeout_ms=poll_timeout_ms,
                         before_revoke=before_revoke)
        while not stopping:
            while conn.poll():
                read(conn.recv())
            if stopping:
                break
            flush(sync=False)
            items = feed.poll()
            lag = feed.lag()
            if items or lag is not None:
                conn.send(("items", items, lag, feed.commits))
        flush(sync=True)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        os._exit(1)  # the parent is gone: commit nothing more
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which stops
        log.exception("fetch process failed")
        try:
            conn.send(("error", f"{type(error).__name__}: {error}"))
        except OSError:
            pass
    finally:
        if feed is not None:
            try:
                feed.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the consumer")
    try:
        conn.send(("closed", feed.commits if feed is not None else 0))
    except OSError:
        pass


class FetchProcess:
    """Parent side: the ``EventFeed`` interface (``poll``, ``commit``, ``close``) over the child.

    ``commit`` only hands the offsets to the child (which commits them before its next poll), so it
    returns at once; ``commits`` is the child's count of commits made (as of its last message).
    """

    def __init__(self, kafka, *, replay_messages: int = 20_000, poll_timeout_ms: int = 200):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, name="tsad-fetch", daemon=True,
                                 args=(child_conn, kafka, replay_messages, poll_timeout_ms, os.getpid(),
                                       logging.getLogger().getEffectiveLevel()))
        self._proc.start()
        child_conn.close()
        self.commits = 0
        self.lag_values: dict | None = None
        self._closed = False

    def poll(self, timeout_ms: int = 200) -> list:
        """Rebalance notices and batches the child sent (in order); the latest lag in ``lag_values``."""
        out = []
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                ready = self._conn.poll(remaining if not out else 0)
                message = self._conn.recv() if ready else None
            except (EOFError, OSError) as error:
                raise FetchProcessDied(f"fetch process exited (code {self._proc.exitcode})") from error
            if message is None:
                if not self._proc.is_alive():
                    raise FetchProcessDied(f"fetch process exited (code {self._proc.exitcode})")
                return out
            kind = message[0]
            if kind == "items":
                out.extend(message[1])
                if message[2] is not None:
                    self.lag_values = message[2]
                self.commits = message[3]
                if any(isinstance(item, Batch) for item in message[1]):
                    return out  # a batch: score it before reading further
            elif kind == "revoking":
                self._conn.send(("revoke_ack",))
            elif kind == "error":
                raise FetchProcessDied(f"fetch process failed: {message[1]}")
            elif kind == "closed":
                raise FetchProcessDied("fetch process closed unexpectedly")

    def lag(self) -> dict | None:
        """The latest ``{tp: lag}`` the child reported, once (None when nothing new came)."""
        lag, self.lag_values = self.lag_values, None
        return lag

    def commit(self, offsets: dict, sync: bool = True) -> bool:  # noqa: ARG002 - the child commits
        if offsets:
            self._conn.send(("done", offsets))
        return bool(offsets)

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the child to commit what was acknowledged and close; wait for it (then kill it)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        try:
            self._conn.send(("stop",))
            while time.monotonic() < deadline:  # keep draining: the child may be blocked sending a batch
                if self._conn.poll(0.1):
                    message = self._conn.recv()
                    if message[0] == "revoking":
                        self._conn.send(("revoke_ack",))
                    elif message[0] == "closed":
                        self.commits = int(message[1])
                        break
                elif not self._proc.is_alive():
                    break
        except (EOFError, OSError):
            pass
        self._proc.join(max(deadline - time.monotonic(), 1.0))
        if self._proc.is_alive():
            log.warning("fetch process did not stop in %.0f s; killing it", timeout_s)
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
