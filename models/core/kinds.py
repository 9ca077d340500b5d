"""The two forecaster kinds, defined once: many-to-one (a window in, the next step out) and
many-to-many (stateful, one step per event)."""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["many-to-one", "many-to-many"]
KINDS: Final[tuple[Kind, Kind]] = ("many-to-one", "many-to-many")
DEFAULT_KIND: Final[Kind] = "many-to-many"
