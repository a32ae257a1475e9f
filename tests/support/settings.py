"""Settings for one config section, built the way users set it: ``VOICE_AGENT_<SECTION>__<KEY>``."""

from __future__ import annotations

from agent.config import AgentSettings, load_config


def section_settings(section: str, **values: str) -> AgentSettings:
    """Settings with ``values`` set in ``section`` through the environment (no GPU, no .env)."""
    env = {f"VOICE_AGENT_{section.upper()}__{key.upper()}": v for key, v in values.items()}
    return load_config(env=env, dotenv_path=None, cuda_available=False).settings
