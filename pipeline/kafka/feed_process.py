"""The scorer's ``EventFeed`` run in a child process, so fetching and scoring use two cores.

kafka-python's fetch path is pure Python (~8 µs/event): it holds the GIL, so a fetch *thread*
cannot overlap with scoring. ``FetchProcess`` starts a child (spawn; it imports no torch) that owns
the consumer and sends each ``Batch`` through a pipe while the parent scores the previous one.

Protocol (pickled tuples over one duplex ``multiprocessing`` pipe):

* child -> parent: ``("items", [notice | Batch, ...], lag or None, commits so far)`` (notices:
  ``Rebalance``, ``PartitionReset``, ``SkippedRange``); ``("committed",)`` after each commit;
  ``("revoking",)`` when a rebalance is about to take partitions; ``("error", text)``;
  ``("closed", commits)`` on exit.
* parent -> child: ``("done", {tp: offset}, epoch)`` at a checkpoint, once every output produced
  up to it is acknowledged: the child commits it synchronously and answers ``("committed",)``.
  The parent does not wait for that answer (scoring goes on), but sends no next checkpoint before
  it came, so at most one checkpoint is ever in flight; ``("revoke_ack",)`` answers ``"revoking"``
  once every batch sent before it is scored and checkpointed; ``("stop",)``.

At-least-once holds as in-process: the child commits only offsets the parent acknowledged; on a
rebalance it first lets the parent finish every batch it was sent (acknowledgements that arrive
inside the rebalance are committed right after it, for the partitions kept); on ``stop`` it commits
what was acknowledged and closes; batches sent but not acknowledged are left uncommitted. If the
parent dies (``kill -9``), the child dies with it (``PR_SET_PDEATHSIG``, and a broken pipe) without
committing anything more; if the child dies, the parent's ``poll`` raises ``FetchProcessDied``.

Long (~370 lines) because it holds both ends of one pipe protocol (the child's loop and the
parent's ``FetchProcess``): kept side by side so the two halves are read together.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from kafka.structs import TopicPartition

from models.core.settings import KafkaSettings
from pipeline.kafka.feed import Batch, EventFeed, Notice

log = logging.getLogger(__name__)
_REVOKE_WAIT_S = 120.0
MERGE_RECORDS = 50_000  # waiting batches are merged up to this many records (at most one checkpoint's worth)


class FetchProcessDied(RuntimeError):
    """The fetch process exited or failed; the scorer stops (uncommitted batches are re-read)."""


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the broken pipe tells instead
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(
    conn: Connection, kafka: KafkaSettings, replay_messages: int, poll_timeout_ms: int, parent_pid: int, log_level: int
) -> None:
    """(child) Poll, send batches, commit what the parent acknowledged."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[fetch]: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, log_level))
    _Child(conn).run(kafka, replay_messages, poll_timeout_ms)


class _Child:
    """(child) The fetch loop over one ``EventFeed``: sends what it polls, commits what the parent
    acknowledged (see the module docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.feed: EventFeed | None = None
        self.acked: dict[TopicPartition, tuple[int, int | None]] = {}  # acknowledged, not committed (latest wins)
        self.stopping = False
        self.confirms = 0  # "committed" answers owed for commits sent with commit_async

    def run(self, kafka: KafkaSettings, replay_messages: int, poll_timeout_ms: int) -> None:
        """The loop until ``stop``; then commit what was acknowledged, close and say so."""
        try:
            self.feed = EventFeed(
                kafka,
                replay_messages=replay_messages,
                poll_timeout_ms=poll_timeout_ms,
                before_revoke=self.before_revoke,
            )
            self._loop(self.feed)
        except (BrokenPipeError, EOFError, ConnectionResetError):
            os._exit(1)  # the parent is gone: commit nothing more
        except BaseException as error:
            log.exception("fetch process failed")
            with contextlib.suppress(OSError):
                self.conn.send(("error", f"{type(error).__name__}: {error}"))
        finally:
            if self.feed is not None:
                try:
                    self.feed.close()
                except Exception:
                    log.exception("closing the consumer")
        with contextlib.suppress(OSError):
            self.conn.send(("closed", self.feed.commits if self.feed is not None else 0))

    def _loop(self, feed: EventFeed) -> None:
        while not self.stopping:
            while self.conn.poll():
                self.read(self.conn.recv())
            self.flush()  # what was acknowledged during a rebalance
            if self.stopping:
                break
            items = feed.poll()
            if items:
                self.conn.send(("items", items, None, feed.commits))
            self._settle(feed)
        self.requeue(feed.wait_commits()[1])
        self.flush()

    def _settle(self, feed: EventFeed) -> None:
        """Confirm the asynchronous commits that finished (failed ones are committed again at the
        next flush); report the lag and the commit count when there is news."""
        settled, failed = feed.settled_commits()
        self.requeue(failed)
        for _ in range(min(settled, self.confirms)):
            self.conn.send(("committed",))
        self.confirms -= min(settled, self.confirms)
        lag = feed.lag()
        if lag is not None or settled:
            self.conn.send(("items", [], lag, feed.commits))

    def _feed(self) -> EventFeed:
        assert self.feed is not None, "the feed is made before any message is read"
        return self.feed

    def current_acked(self) -> dict[TopicPartition, int]:
        """``acked`` less partitions reset since their offsets were read (checked at commit time)."""
        feed = self._feed()
        return {tp: o for tp, (o, epoch) in self.acked.items() if feed.current({tp: o}, epoch)}

    def requeue(self, failed: dict[TopicPartition, tuple[int, int | None]]) -> None:
        for tp, (offset, epoch) in failed.items():
            self.acked.setdefault(tp, (offset, epoch))  # a newer acknowledgement supersedes it

    def read(self, message: tuple[Any, ...], in_rebalance: bool = False) -> str:
        """Apply one parent message; returns its kind."""
        kind = str(message[0])
        if kind == "done":  # commit at once (without blocking the fetch loop) and confirm once done
            self.acked.update({tp: (o, message[2]) for tp, o in message[1].items()})
            # no consumer call inside a rebalance callback: those are committed right after it
            # (kept partitions only)
            if not in_rebalance and self._feed().commit_async(self.current_acked(), tag=dict(self.acked)):
                self.acked.clear()
                self.confirms += 1
            else:
                self.conn.send(("committed",))
        elif kind == "stop":
            self.stopping = True
        return kind

    def before_revoke(self, _revoked: set[TopicPartition]) -> None:
        """(inside the rebalance) Let the parent score and checkpoint every batch sent so far."""
        self.conn.send(("revoking",))
        deadline = time.monotonic() + _REVOKE_WAIT_S
        while time.monotonic() < deadline and not self.stopping:
            if self.conn.poll(0.1) and self.read(self.conn.recv(), in_rebalance=True) == "revoke_ack":
                break

    def flush(self) -> None:
        """Commit (synchronously) what was acknowledged and not committed yet."""
        if self.acked:
            self._feed().commit(self.current_acked())
            self.acked.clear()


def take_merged(buffer: list[Notice | Batch], merge_records: int) -> tuple[list[Notice | Batch], list[Notice | Batch]]:
    """``(items to hand out, the rest of buffer)``: the leading notices, then the run of consecutive
    batches after them merged into one (``Batch.merged``); the run stops at a notice, or once it
    holds ``merge_records`` records."""
    k = next((j for j, item in enumerate(buffer) if isinstance(item, Batch)), len(buffer))
    out: list[Notice | Batch] = buffer[:k]
    run: list[Batch] = []
    n = 0
    while k < len(buffer) and (not run or n < merge_records):
        item = buffer[k]
        if not isinstance(item, Batch):
            break
        run.append(item)
        n += len(item)
        k += 1
    return out + ([Batch.merged(run)] if run else []), buffer[k:]


class FetchProcess:
    """Parent side: the ``EventFeed`` interface (``poll``, ``commit``, ``close``) over the child.

    ``commit`` only hands the offsets to the child (which commits them before its next poll), so it
    returns at once; ``commits`` is the child's count of commits made (as of its last message).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        replay_messages: int = 20_000,
        poll_timeout_ms: int = 200,
        merge_records: int = MERGE_RECORDS,
        before_revoke_ack: Callable[[], object] | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_child_main,
            name="tsad-fetch",
            daemon=True,
            args=(
                child_conn,
                kafka,
                replay_messages,
                poll_timeout_ms,
                os.getpid(),
                logging.getLogger().getEffectiveLevel(),
            ),
        )
        self._proc.start()
        child_conn.close()
        self.commits = 0
        self.lag_values: dict | None = None
        self.merge_records = max(int(merge_records), 1)
        self.before_revoke_ack = before_revoke_ack  # e.g. the scorer's checkpoint, before partitions go
        self._commit_in_flight = False
        self._revoking = False
        self._closed = False
        self._buffer: list[Notice | Batch] = []  # items read while waiting for a commit, not handed out yet
        self._revoke_pending = False  # a "revoking" to answer once the buffered batches are scored

    def poll(self, timeout_ms: int = 200) -> list[Notice | Batch]:
        """Rebalance notices and batches the child sent (in order); the latest lag in ``lag_values``.

        Batches already waiting (the scorer fell behind) come back merged into one, up to
        ``merge_records`` records: one model pass for all of them, so a backlog of small batches
        is worked off instead of growing.
        """
        if self._revoke_pending and not any(isinstance(item, Batch) for item in self._buffer):
            self._revoke_pending = False  # every batch sent before the "revoking" is scored now
            self._ack_revoke()
        if not self._buffer:
            deadline = time.monotonic() + timeout_ms / 1000.0
            while True:
                message = self._recv(0.0 if self._buffer else max(deadline - time.monotonic(), 0.0))
                if message is None or self._handle(message, self._buffer):
                    break
        while self._buffered_records() < self.merge_records:  # what else is there already, without waiting
            message = self._recv(0.0)
            if message is None:
                break
            self._handle(message, self._buffer)
        return self._take()

    def _buffered_records(self) -> int:
        return sum(len(item) for item in self._buffer if isinstance(item, Batch))

    def _take(self) -> list[Notice | Batch]:
        out, self._buffer = take_merged(self._buffer, self.merge_records)
        return out

    def _recv(self, timeout_s: float) -> tuple[Any, ...] | None:
        """The child's next message, or None after ``timeout_s``; ``FetchProcessDied`` if it is gone."""
        try:
            if self._conn.poll(timeout_s):
                return self._conn.recv()
        except (EOFError, OSError) as error:
            raise FetchProcessDied(f"fetch process exited (code {self._proc.exitcode})") from error
        if not self._proc.is_alive():
            raise FetchProcessDied(f"fetch process exited (code {self._proc.exitcode})")
        return None

    def _handle(self, message: tuple[Any, ...], out: list[Notice | Batch]) -> bool:
        """Apply one child message; items go to ``out``. True when it carried a batch or a revoke
        request (``poll`` returns then)."""
        kind = message[0]
        if kind == "items":
            out.extend(message[1])
            if message[2] is not None:
                self.lag_values = message[2]
            self.commits = message[3]
            return any(isinstance(item, Batch) for item in message[1])
        if kind == "committed":
            self._commit_in_flight = False
        elif kind == "revoking":
            self._revoke_pending = True  # answered by the next poll(), once the batches before it are scored
            return True
        elif kind == "error":
            raise FetchProcessDied(f"fetch process failed: {message[1]}")
        elif kind == "closed":
            raise FetchProcessDied("fetch process closed unexpectedly")
        return False

    def lag(self) -> dict | None:
        """The latest ``{tp: lag}`` the child reported, once (None when nothing new came)."""
        lag, self.lag_values = self.lag_values, None
        return lag

    def _ack_revoke(self) -> None:
        if self.before_revoke_ack is not None:
            self._revoking = True  # the child is inside the rebalance: no commit of it can finish now
            try:
                self.before_revoke_ack()
            finally:
                self._revoking = False
        self._conn.send(("revoke_ack",))

    def commit(self, offsets: dict, epoch: int | None = None) -> bool:
        """Hand a checkpoint's ``offsets`` (read at ``epoch``) to the child, which commits them.

        Returns at once, after waiting only for the previous checkpoint's confirmation when it has
        not come yet (at most one in flight); batches the child sends meanwhile are kept for the
        next ``poll``.
        """
        if not offsets:
            return False
        if not self._revoking:  # (during a revoke the child answers at once and commits after it)
            self.wait_committed()
        self._conn.send(("done", offsets, epoch))
        self._commit_in_flight = True
        return True

    @property
    def commit_in_flight(self) -> bool:
        """A checkpoint was handed to the child and not confirmed yet."""
        return self._commit_in_flight

    def wait_committed(self, timeout_s: float = 60.0) -> None:
        """Wait until the checkpoint in flight (if any) is confirmed by the child. Not once the child
        is inside a rebalance (a revoke pending): no commit finishes there, and the child answers
        the next checkpoint at once and commits it right after the rebalance."""
        deadline = time.monotonic() + timeout_s
        while self._commit_in_flight and not self._revoke_pending:
            if time.monotonic() > deadline:
                raise FetchProcessDied(f"fetch process did not confirm a commit in {timeout_s:.0f} s")
            message = self._recv(0.1)
            if message is not None:
                self._handle(message, self._buffer)

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
