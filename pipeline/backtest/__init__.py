"""Backtest: replay labelled history through the live scoring code and score it NAB-style."""
