"""Fixtures for the config-swap tests: the TTS tests' tiny Magpie (built once per session)."""

from tests.tts.conftest import tiny_magpie_path  # noqa: F401
