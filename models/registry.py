"""File-system model registry: versioned bundles, a champion pointer, promote/rollback.

Layout::

    root/<name>/v0001/weights.pt   state_dict (torch.save; loaded with weights_only=True)
    root/<name>/v0001/meta.json    config, kind, normalizers, calibration, metrics, sha256, created_at, ...
    root/<name>/champion.json      {"version": 3, "history": [1, 2]}   (written atomically: tmp + os.replace)

A version directory is assembled under a temporary name and renamed into place, so readers never
see half-written versions. Mutations of one model name are serialised with an flock on
``root/<name>/.lock`` (safe across processes on one host). A version whose files are missing,
unreadable or whose weights do not match the recorded sha256 raises ``CorruptModelError``; it is
never loaded, promoted or rolled back to.

Long (~380 lines) because it is the whole on-disk protocol in one place: the layout, the lock,
the atomic writes and the checks every read makes belong together.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.forecasting.bundle import ModelBundle
from models.forecasting.calibration import Calibration
from models.forecasting.forecasters import ForecasterConfig, build_forecaster
from models.forecasting.windows import SeriesNormalizer

FORMAT = 1
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class RegistryError(Exception):
    """Base class for registry failures."""


class CorruptModelError(RegistryError):
    """A stored version cannot be trusted (missing/corrupt files, checksum mismatch, bad weights)."""


class ModelNotFoundError(RegistryError, LookupError):
    """Unknown model name/version, or no champion yet."""


class InvalidModelNameError(RegistryError, ValueError):
    """A model name that is not a plain directory name (e.g. ``..``, ``../../etc``, ``/etc``)."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_name(name: str) -> str:
    """``name`` if it is a safe model name (letters, digits, ``_ . -``, not starting with a dot or a
    dash, at most 128 characters), else ``InvalidModelNameError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidModelNameError(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return name


@dataclass
class VersionInfo:
    """One row of ``ModelRegistry.list``."""

    name: str
    version: int
    created_at: str | None
    kind: str | None
    metrics: dict[str, Any]
    is_champion: bool
    ok: bool  # meta.json readable and weights present (checksum is verified on load/promote)
    idempotency_key: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON via a temporary file + ``os.replace``; the temporary file never outlives a failure."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelRegistry:
    """Versioned model store under ``root`` (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths & locking
    def _model_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def _version_dir(self, name: str, version: int) -> Path:
        return self._model_dir(name) / f"v{version:04d}"

    @contextlib.contextmanager
    def _lock(self, name: str, create: bool = True) -> Iterator[None]:
        """Hold the model's flock; ``create=False``: a model that does not exist is an error (no
        directory is left behind by a promote or rollback of an unknown name)."""
        d = self._model_dir(name)
        if not create and not d.is_dir():
            raise ModelNotFoundError(f"no model named {name!r} in {self.root}")
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ queries
    def names(self) -> list[str]:
        """Model names in the registry, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        """Version numbers of ``name``, ascending (none for an unknown name)."""
        d = self._model_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _VERSION_DIR.match(p.name)))

    def champion(self, name: str) -> int | None:
        """Current champion version, or None if none was promoted."""
        return self._read_pointer(name).version

    def meta(self, name: str, version: int) -> dict[str, Any]:
        """meta.json of a version (CorruptModelError if unreadable, ModelNotFoundError if absent)."""
        vdir = self._version_dir(name, version)
        if not vdir.is_dir():
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        try:
            meta = json.loads((vdir / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise CorruptModelError(f"{name} v{version}: meta.json missing or unreadable ({exc})") from exc
        if not isinstance(meta, dict):
            raise CorruptModelError(f"{name} v{version}: meta.json is not a JSON object")
        return meta

    def list(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` with its metadata; unreadable ones as ``ok=False``."""
        champ = self.champion(name)
        rows = []
        for v in self.versions(name):
            try:
                meta = self.meta(name, v)
                ok = (self._version_dir(name, v) / "weights.pt").is_file()
            except CorruptModelError:
                meta, ok = {}, False
            rows.append(
                VersionInfo(
                    name=name,
                    version=v,
                    created_at=meta.get("created_at"),
                    kind=meta.get("kind"),
                    metrics=meta.get("metrics", {}),
                    is_champion=v == champ,
                    ok=ok,
                    idempotency_key=meta.get("idempotency_key"),
                )
            )
        return rows

    # ------------------------------------------------------------------ register / load
    def register(
        self,
        bundle: ModelBundle,
        metrics: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        data_range: tuple[str, str] | None = None,
        interval_id: str | None = None,
    ) -> int:
        """Store ``bundle`` as a new version of ``bundle.name`` and return its number.

        With ``idempotency_key``, a version already registered under that key is returned instead
        (re-running an Airflow interval creates no duplicate). Sets ``bundle.version``.
        """
        name = bundle.name
        with self._lock(name):
            if idempotency_key is not None:
                existing = self._version_with_key(name, idempotency_key)
                if existing is not None:
                    bundle.version = existing
                    return existing
            version = max(self.versions(name), default=0) + 1
            all_metrics = {**bundle.metrics, **(metrics or {})}
            provenance = {"data_range": list(data_range) if data_range else None, "interval_id": interval_id}
            meta = self._write_version(bundle, version, all_metrics, {**provenance, "idempotency_key": idempotency_key})
        bundle.version, bundle.metrics, bundle.meta = version, all_metrics, meta
        return version

    def _version_with_key(self, name: str, idempotency_key: str) -> int | None:
        """The newest readable version registered under ``idempotency_key``, if any."""
        for v in reversed(self.versions(name)):
            with contextlib.suppress(CorruptModelError):
                if self.meta(name, v).get("idempotency_key") == idempotency_key:
                    return v
        return None

    def _write_version(
        self, bundle: ModelBundle, version: int, metrics: dict[str, Any], provenance: dict[str, Any]
    ) -> dict[str, Any]:
        """Assemble weights.pt and meta.json under a temporary name, then rename it into place; the
        meta.json written. Nothing is left behind on failure. Hold the model's lock."""
        name = bundle.name
        tmp = self._model_dir(name) / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            state = {k: v.detach().cpu() for k, v in bundle.forecaster.state_dict().items()}
            torch.save(state, tmp / "weights.pt")
            meta = {
                "format": FORMAT,
                "name": name,
                "version": version,
                "kind": bundle.kind,
                "config": bundle.config.to_dict(),
                "normalizers": {sid: SeriesNormalizer.from_dict(n).to_dict() for sid, n in bundle.normalizers.items()},
                "calibration": bundle.calibration.to_dict() if bundle.calibration is not None else None,
                "metrics": metrics,
                "sha256": _sha256(tmp / "weights.pt"),
                "created_at": datetime.now(UTC).isoformat(),
                **provenance,  # data_range, interval_id, idempotency_key
            }
            _write_json_atomic(tmp / "meta.json", meta)
            os.rename(tmp, self._version_dir(name, version))
            _fsync_dir(self._model_dir(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    def load(self, name: str, version: int | None = None) -> ModelBundle:
        """Load a version (default: the champion), verifying its checksum. Eval mode, CPU."""
        if version is None:
            version = self.champion(name)
            if version is None:
                raise ModelNotFoundError(f"model {name!r} has no champion")
        meta = self.meta(name, version)
        weights = self._version_dir(name, version) / "weights.pt"
        where = f"{name} v{version}"
        if not weights.is_file():
            raise CorruptModelError(f"{where}: weights.pt is missing")
        if "sha256" not in meta or _sha256(weights) != meta["sha256"]:
            raise CorruptModelError(f"{where}: weights.pt checksum mismatch (file changed or truncated)")
        try:  # everything read from meta.json is untrusted: any failure means "never serve it"
            return _bundle_from_meta(name, version, meta, weights)
        except Exception as exc:  # bad config / meta / unpicklable / shape mismatch: never serve it
            raise CorruptModelError(f"{where}: cannot load ({type(exc).__name__}: {exc})") from exc

    def verify(self, name: str, version: int) -> None:
        """Raise ``CorruptModelError``/``ModelNotFoundError`` unless the version loads cleanly."""
        self.load(name, version)

    # ------------------------------------------------------------------ champion pointer
    def _read_pointer(self, name: str) -> _Pointer:
        path = self._model_dir(name) / "champion.json"
        if not path.is_file():
            return _Pointer()
        try:
            pointer = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(pointer, dict):
            raise RegistryError(f"{path} is not a JSON object (got a {type(pointer).__name__})")
        version, history = pointer.get("version"), pointer.get("history", [])
        if (version is not None and (isinstance(version, bool) or not isinstance(version, int))) or not (
            isinstance(history, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in history)
        ):
            raise RegistryError(f"{path}: 'version' must be an integer and 'history' a list of integers")
        return _Pointer(version, tuple(history))

    def _write_pointer(self, name: str, version: int, history: Sequence[int]) -> None:
        _write_json_atomic(
            self._model_dir(name) / "champion.json",
            {"version": version, "history": list(history), "updated_at": datetime.now(UTC).isoformat()},
        )

    def promote(self, name: str, version: int) -> None:
        """Make ``version`` the champion (verified first; corrupt versions are refused)."""
        with self._lock(name, create=False):
            self.verify(name, version)
            ptr = self._read_pointer(name)
            history = list(ptr.history)
            if ptr.version is not None and ptr.version != version:
                history.append(ptr.version)
            self._write_pointer(name, version, history)

    def rollback(self, name: str) -> int:
        """Restore the previous champion and return it (the abandoned one is dropped from history)."""
        with self._lock(name, create=False):
            history = list(self._read_pointer(name).history)
            if not history:
                raise ModelNotFoundError(f"model {name!r} has no previous champion to roll back to")
            previous = history.pop()
            self.verify(name, previous)
            self._write_pointer(name, previous, history)
            return previous


@dataclass(frozen=True)
class _Pointer:
    """champion.json: the champion version (None before the first promote) and the earlier
    champions, oldest first (``rollback`` pops the last)."""

    version: int | None = None
    history: tuple[int, ...] = ()


def _bundle_from_meta(name: str, version: int, meta: dict[str, Any], weights: Path) -> ModelBundle:
    """The bundle a version's meta.json and weights describe; any exception means it cannot be served."""
    config = ForecasterConfig.from_dict(meta["config"])
    kind = meta["kind"]
    if kind != config.kind:
        raise ValueError(f"meta kind {kind!r} does not match config kind {config.kind!r}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_forecaster(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    normalizers = meta.get("normalizers") or {}
    calibration = meta.get("calibration") or {}
    metrics = meta.get("metrics") or {}
    if not all(isinstance(x, dict) for x in (normalizers, calibration, metrics)):
        raise TypeError("normalizers, calibration and metrics must be JSON objects")
    normalizers = {sid: SeriesNormalizer.from_dict(d) for sid, d in normalizers.items()}
    bad = next((sid for sid, n in normalizers.items() if not all(map(math.isfinite, n))), None)
    if bad is not None:
        raise ValueError(f"normalizer of series {bad!r} is not finite")
    return ModelBundle(
        name=name,
        kind=kind,
        version=version,
        config=config,
        forecaster=model,
        normalizers=normalizers,
        calibration=Calibration.from_dict(calibration),
        metrics=metrics,
        meta=meta,
    )
