"""The retraining contracts: ``Job``, ``Plan``, ``Candidate`` and ``Decision``, and which jobs a run has.

Inside ``pipeline.retrain`` they are typed dataclasses; Airflow passes values between tasks as
JSON (XCom), so each has ``to_dict()`` / ``from_dict()`` for the DAG boundary and nothing else.
This module is light (no numpy, pandas or torch): the DAG file imports it when it is parsed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models.core.kinds import KINDS, Kind
from models.core.settings import Settings


class NotEnoughDataError(Exception):
    """The archive holds too little data for the interval; the message says what was found."""


def model_name(group: str, kind: str) -> str:
    """Registry name of a group's model of one kind, e.g. ``default-many-to-one``."""
    return f"{group}-{kind}"


def _kind(value: object) -> Kind:
    for kind in KINDS:
        if value == kind:
            return kind
    raise ValueError(f"unknown kind {value!r}; expected one of {KINDS}")


@dataclass(frozen=True)
class Job:
    """One training job: the forecaster ``kind`` of one model group, trained on the series ``patterns`` match."""

    group: str
    patterns: tuple[str, ...]
    kind: Kind

    @property
    def name(self) -> str:
        return model_name(self.group, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "pattern": list(self.patterns), "kind": self.kind, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        pattern = data["pattern"]
        patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        return cls(str(data["group"]), patterns, _kind(data["kind"]))


def retrain_groups(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Model group -> series globs: the routing file's groups (``settings.routing``, the file ``tsad
    serve --routing`` reads) when set, else ``settings.retrain.groups`` (``TSAD_RETRAIN_GROUPS``)."""
    if settings.routing:
        from models.routing import Routing

        return {g: tuple(p) for g, p in Routing.load(settings.routing).retrain_groups().items()}
    return {g: (p,) if isinstance(p, str) else tuple(p) for g, p in settings.retrain.groups.items()}


def plan_jobs(settings: Settings) -> list[Job]:
    """One training job per (group, kind), in a stable order (groups sorted, kinds as configured)."""
    groups = retrain_groups(settings)
    return [Job(g, groups[g], kind) for g in sorted(groups) for kind in settings.retrain.kinds]


@dataclass(frozen=True)
class Plan:
    """Training range, held-out cut and eligible series for one data interval (times ISO-8601 UTC)."""

    interval_start: str
    interval_end: str
    start: str  # the training range is [start, end)
    end: str
    cut: float  # held-out cut, epoch seconds: values at or after it are held out
    cut_iso: str
    series: tuple[str, ...]  # series with enough values on both sides of the cut
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # series -> (train, held-out) values

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(series=list(self.series), counts={s: list(c) for s, c in self.counts.items()})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            interval_start=data["interval_start"],
            interval_end=data["interval_end"],
            start=data["start"],
            end=data["end"],
            cut=float(data["cut"]),
            cut_iso=data["cut_iso"],
            series=tuple(data["series"]),
            counts={s: (int(c[0]), int(c[1])) for s, c in (data.get("counts") or {}).items()},
        )


@dataclass(frozen=True)
class Candidate:
    """A registered (unpromoted) version trained by ``job``; ``metrics`` as in its meta.json."""

    job: Job
    version: int
    metrics: dict[str, Any]
    reused: bool  # True: a re-run found the version this interval had already registered

    @property
    def name(self) -> str:
        return self.job.name

    def to_dict(self) -> dict[str, Any]:
        return {**self.job.to_dict(), "version": self.version, "metrics": self.metrics, "reused": self.reused}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(Job.from_dict(data), int(data["version"]), dict(data.get("metrics") or {}), bool(data["reused"]))


@dataclass
class Decision:
    """What ``promote_if_better`` did with one candidate, and why."""

    name: str
    candidate: int
    champion_before: int | None
    promoted: bool
    reason: str
    candidate_nmae: float | None
    champion_nmae: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})
