"""Event limits: one definition, read by the event parser, the scorer, the detector and the settings.

``MAX_ABS_VALUE`` is 2**53, the largest magnitude at which every integer is still exact in float64;
the parser rejects larger values (``value_out_of_range``) and the detector clips what Kafka-free
callers hand it to the same bound, so squares stay far below float64 overflow.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SERIES_ID_LENGTH = 256
MAX_ABS_VALUE = float(2**53)
