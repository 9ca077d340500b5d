"""Model routing: which registry model scores which series (one config for ``tsad serve`` and the DAG).

The routing file (YAML or JSON; ``TSAD_ROUTING`` or ``tsad serve --routing PATH``)::

    serve_kind: many-to-many        # which of a group's retrained models is served (default)
    routes:                         # first matching route wins
      - group: cpu                  # routing group: the DAG retrains it as "cpu-<kind>"
        match: ["ec2_cpu_*", "cpu-*"]   # fnmatch globs over series ids (case-sensitive)
      - group: web
        match: "speed_*"
        model: web-special          # optional: serve this registry model instead of "web-<serve_kind>"
    default: default                # group (or {group: ..., model: ...}) of every other series

A series goes to the first route with a matching glob, else to the default. ``tsad serve`` serves
``model`` (default ``<group>-<serve_kind>``) of each route; the retraining DAG trains every group
on exactly the series routed to it (the same first-match rule). Without a routing file the DAG
falls back to ``TSAD_RETRAIN_GROUPS`` (``{"group": "glob"}``, groups may overlap;
``pipeline.retrain.contracts.retrain_groups``) and ``tsad serve`` to one ``--model`` for every series. Routing is read at start: changing it needs a restart
of the scorers (the models themselves are hot-reloaded).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from models.core.kinds import DEFAULT_KIND, KINDS, Kind

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CACHE_LIMIT = 200_000


class RoutingError(ValueError):
    """The routing file is missing, unreadable or invalid (the message says which and where)."""


@dataclass(frozen=True)
class Route:
    """One route: series matching any of ``patterns`` are scored by ``model``; ``group`` names the route."""

    group: str
    model: str
    patterns: tuple[str, ...]


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RoutingError(
            f"{what} must be a name of letters, digits, '_', '.', '-' (not starting with '.' or '-'), got {value!r}"
        )
    return value


class Routing:
    """Routes in order plus the default; ``route_of(series)`` is cached (bounded)."""

    def __init__(self, routes: list[Route], default: Route, serve_kind: Kind = DEFAULT_KIND, source: str = ""):
        self.routes = list(routes)
        self.default = default
        self.serve_kind = serve_kind
        self.source = source
        self._cache: dict[str, int] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def single(cls, model: str) -> Routing:
        """Every series to ``model`` (``tsad serve --model`` without routing)."""
        return cls([], Route(model, model, ("*",)))

    @classmethod
    def from_dict(cls, data: Any, source: str = "routing") -> Routing:
        if not isinstance(data, dict):
            raise RoutingError(f"{source}: expected a mapping with 'routes' and 'default', got {type(data).__name__}")
        unknown = set(data) - {"routes", "default", "serve_kind"}
        if unknown:
            raise RoutingError(f"{source}: unknown keys {sorted(unknown)} (expected routes, default, serve_kind)")
        serve_kind = data.get("serve_kind", DEFAULT_KIND)
        if serve_kind not in KINDS:
            raise RoutingError(f"{source}: serve_kind must be one of {KINDS}, got {serve_kind!r}")
        kind = cast(Kind, serve_kind)
        raw_routes = data.get("routes") or []
        if not isinstance(raw_routes, list):
            raise RoutingError(f"{source}: 'routes' must be a list")
        routes = []
        for k, item in enumerate(raw_routes):
            where = f"{source}: routes[{k}]"
            if not isinstance(item, dict) or "match" not in item or not ({"group", "model"} & set(item)):
                raise RoutingError(
                    f"{where}: expected {{group: NAME, match: GLOB or [GLOB...], model: NAME (optional)}}, got {item!r}"
                )
            extra = set(item) - {"group", "match", "model"}
            if extra:
                raise RoutingError(f"{where}: unknown keys {sorted(extra)}")
            match = item["match"]
            patterns = (match,) if isinstance(match, str) else tuple(match) if isinstance(match, list) else ()
            if not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise RoutingError(f"{where}: 'match' must be a glob or a non-empty list of globs, got {match!r}")
            group = _name(item.get("group", item.get("model")), f"{where}: group")
            model = _name(item.get("model", f"{group}-{kind}"), f"{where}: model")
            routes.append(Route(group, model, patterns))
        default = data.get("default")
        if default is None:
            raise RoutingError(
                f"{source}: 'default' is required (the group, or {{group, model}}, of every series no route matches)"
            )
        if isinstance(default, str):
            default = {"group": default}
        if not isinstance(default, dict) or not ({"group", "model"} & set(default)):
            raise RoutingError(f"{source}: 'default' must be a group name or {{group: NAME, model: NAME}}")
        group = _name(default.get("group", default.get("model")), f"{source}: default group")
        model = _name(default.get("model", f"{group}-{kind}"), f"{source}: default model")
        models_of: dict[str, str] = {}
        for r in [*routes, Route(group, model, ("*",))]:
            if models_of.setdefault(r.group, r.model) != r.model:
                raise RoutingError(
                    f"{source}: group {r.group!r} is routed to two models ({models_of[r.group]!r}, {r.model!r})"
                )
        return cls(routes, Route(group, model, ("*",)), kind, source)

    @classmethod
    def load(cls, where: str | os.PathLike[str]) -> Routing:
        """Read a routing file (``.json``: JSON; anything else: YAML, of which JSON is a subset)."""
        path = Path(where)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RoutingError(f"cannot read routing file {path}: {error.strerror or error}") from error
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RoutingError(f"routing file {path} is not valid YAML/JSON: {first}") from error
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------------ lookups
    @property
    def all_routes(self) -> list[Route]:
        """The routes, then the default (index ``len(routes)``)."""
        return [*self.routes, self.default]

    def route_of(self, series: str) -> int:
        """Index in ``all_routes`` of the route scoring ``series`` (first match; the default last)."""
        hit = self._cache.get(series)
        if hit is None:
            hit = len(self.routes)
            for k, route in enumerate(self.routes):
                if any(fnmatch.fnmatchcase(series, p) for p in route.patterns):
                    hit = k
                    break
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[series] = hit
        return hit

    def model_of(self, series: str) -> str:
        return self.all_routes[self.route_of(series)].model

    def group_of(self, series: str) -> str:
        return self.all_routes[self.route_of(series)].group

    @property
    def models(self) -> list[str]:
        """Distinct served models, in route order (bounds the ``model`` metric label)."""
        return list(dict.fromkeys(r.model for r in self.all_routes))

    def retrain_groups(self) -> dict[str, list[str]]:
        """Group -> globs, for the retraining DAG (each group trains on the series routed to it)."""
        out: dict[str, list[str]] = {}
        for route in self.all_routes:
            out.setdefault(route.group, []).extend(route.patterns)
        return out
