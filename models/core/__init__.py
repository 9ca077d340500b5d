"""Bottom layer, importable by every other: the settings tree, event limits, time helpers and the per-series array state shared by the streaming classes."""
