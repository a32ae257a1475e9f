"""Logging set-up; it lives in ``pipelines/logs.py`` (builders need it too)."""

from pipelines.logs import setup_logging  # noqa: F401
