"""Typed settings for the voice agent, layered from defaults, profiles, TOML, .env, env and CLI.

Precedence, lowest to highest:

1. defaults in the settings classes (``pipelines/settings.py``);
2. the selected profile (built-in ``cpu`` / ``nvidia``, or ``[profiles.NAME]`` in the TOML file);
3. the TOML file given with ``--config`` (top-level tables);
4. ``.env`` in the working directory (only keys not already in the process environment);
5. environment variables ``VOICE_AGENT_<SECTION>__<KEY>`` (e.g. ``VOICE_AGENT_LLM__MODEL``);
6. CLI overrides (``--set llm.temperature=0.3``).

A TOML file's ``[profiles.NAME]`` table overrides the built-in profile of that name and is applied
below the file's top-level tables, so a file can say "use profile X, but with this model".
Every resolved value remembers where it came from (``voice-agent config`` prints it).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from agent.profiles import BUILTIN_PROFILES, detect_default_profile
from pipelines.registry import REGISTRIES

# The settings type lives in pipelines/ (the builders take it without importing this layer);
# every name stays importable from here.
from pipelines.settings import (  # noqa: F401
    DEFAULT_MAGPIE_MODEL,
    DEFAULT_NEMOTRON_MODEL,
    DEFAULT_SYSTEM_PROMPT,
    AgentSettings,
    LLMSettings,
    STTSettings,
    TransportSettings,
    TTSSettings,
    TurnSettings,
    VADSettings,
    _Section,
)

ENV_PREFIX = "VOICE_AGENT_"

SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in AgentSettings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, _Section)
}
# Keys whose value names a registry entry, checked after merging so the message lists what exists.
_BACKEND_KEYS = {"stt.backend": "stt", "tts.backend": "tts", "llm.preset": "llm"}


class ConfigError(Exception):
    """A configuration problem, with a message meant for the user."""


@dataclass
class ResolvedConfig:
    """Settings plus the origin of every leaf value (``"stt.model" -> "env VOICE_AGENT_..."``)."""

    settings: AgentSettings
    sources: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        # extra_body is a free-form dict: keep it as one leaf.
        if isinstance(value, Mapping) and dotted in SECTIONS:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        target.setdefault(head, {})
        if not isinstance(target[head], dict):
            raise ConfigError(f"config key {head!r} is a section, not a value")
        _set_dotted(target[head], rest, value)
    else:
        target[head] = value


def parse_scalar(text: str) -> Any:
    """Parse a CLI/env value: JSON/TOML-like scalars and objects, else the raw string."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null", ""):
        return None
    if stripped[:1] in "{[" or stripped.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def read_dotenv(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines from a .env file (quotes stripped, comments ignored)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _env_overrides(env: Mapping[str, str], label: str) -> dict[str, tuple[Any, str]]:
    """Map ``VOICE_AGENT_SECTION__KEY`` (or top-level ``VOICE_AGENT_KEY``) to dotted keys."""
    found: dict[str, tuple[Any, str]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        dotted = rest.replace("__", ".")
        found[dotted] = (parse_scalar(raw), f"{label} {name}")
    return found


def _describe_value(dotted: str, value: Any) -> str:
    if is_secret_key(dotted):
        return "<hidden>"
    return repr(value)


def is_secret_key(dotted: str) -> bool:
    """Whether a dotted key holds a secret that must never be printed."""
    leaf = dotted.rsplit(".", 1)[-1]
    return leaf in ("api_key", "server_token", "token", "password")


def load_config(
    config_path: str | Path | None = None,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
    cuda_available: bool | None = None,
) -> ResolvedConfig:
    """Resolve settings from every layer and validate them.

    Args:
        config_path: TOML file; defaults to ``$VOICE_AGENT_CONFIG`` if set.
        profile: Profile name from the CLI; beats env and file.
        overrides: Dotted-key CLI overrides (``{"llm.temperature": 0.3}``); values may be
            strings, which are parsed like env values.
        env: Environment to read (defaults to ``os.environ``).
        dotenv_path: ``.env`` file whose keys fill in what the environment lacks.
        cuda_available: Forces the ``auto`` profile choice (tests); detected when None.

    Raises:
        ConfigError: With a message that names the key, the value, its source and what is allowed.
    """
    env = dict(os.environ if env is None else env)
    dotenv = read_dotenv(Path(dotenv_path)) if dotenv_path is not None else {}

    if config_path is None:
        config_path = env.get(f"{ENV_PREFIX}CONFIG") or dotenv.get(f"{ENV_PREFIX}CONFIG")
    path = Path(config_path).expanduser() if config_path else None
    file_data = _read_toml(path) if path else {}
    file_profiles = file_data.pop("profiles", {}) or {}
    if not isinstance(file_profiles, dict):
        raise ConfigError("config key 'profiles' must be a table of [profiles.NAME] tables")

    # The real environment beats .env, as with every dotenv tool.
    env_values = _env_overrides(dotenv, ".env")
    env_values.update(_env_overrides(env, "env"))
    cli_values = {
        key: (parse_scalar(v) if isinstance(v, str) else v, "cli --set")
        for key, v in (overrides or {}).items()
    }

    # Profile choice: CLI > env > file > "auto".
    chosen = profile or (env_values.pop("profile", (None, ""))[0]) or file_data.get("profile")
    chosen = str(chosen or "auto")
    profile_source = "cli --profile" if profile else "resolved"
    if chosen == "auto":
        resolved_profile = detect_default_profile(cuda_available)
    else:
        resolved_profile = chosen
    known_profiles = sorted(set(BUILTIN_PROFILES) | set(file_profiles))
    if resolved_profile not in known_profiles:
        raise ConfigError(
            f"profile = {resolved_profile!r} is not defined; allowed: auto, "
            + ", ".join(known_profiles)
            + " (define more as [profiles.NAME] tables in the TOML file)"
        )

    layers: list[tuple[str, dict[str, Any]]] = []
    if resolved_profile in BUILTIN_PROFILES:
        layers.append((f"profile {resolved_profile}", _flatten(BUILTIN_PROFILES[resolved_profile])))
    if resolved_profile in file_profiles:
        layers.append(
            (f"{path} [profiles.{resolved_profile}]", _flatten(file_profiles[resolved_profile]))
        )
    if file_data:
        layers.append((str(path), _flatten(file_data)))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, flat in layers:
        for key, value in flat.items():
            merged[key] = value
            sources[key] = source
    for key, (value, source) in (env_values | cli_values).items():
        merged[key] = value
        sources[key] = source
    merged["profile"] = resolved_profile
    sources["profile"] = profile_source if chosen != "auto" else f"auto ({resolved_profile})"

    nested: dict[str, Any] = {}
    for key, value in merged.items():
        _set_dotted(nested, key, value)

    try:
        settings = AgentSettings.model_validate(nested)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, merged, sources)) from None

    for dotted, capability in _BACKEND_KEYS.items():
        section, leaf = dotted.split(".")
        value = getattr(getattr(settings, section), leaf)
        if value not in REGISTRIES[capability]:
            allowed = ", ".join(sorted(REGISTRIES[capability]))
            raise ConfigError(
                f"{dotted} = {value!r} (from {sources.get(dotted, 'default')}) is not a known "
                f"{capability} backend; allowed: {allowed}"
            )

    for name in AgentSettings.model_fields:
        section = getattr(settings, name)
        if isinstance(section, _Section):
            for leaf in type(section).model_fields:
                sources.setdefault(f"{name}.{leaf}", "default")
        else:
            sources.setdefault(name, "default")
    return ResolvedConfig(settings=settings, sources=sources, config_path=path)


def _format_validation_error(
    exc: ValidationError, merged: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        source = sources.get(loc) or next(
            (src for key, src in sources.items() if key.startswith(loc + ".")), "default"
        )
        if err["type"] == "extra_forbidden":
            section = str(err["loc"][0]) if len(err["loc"]) > 1 else ""
            model = SECTIONS.get(section, AgentSettings)
            allowed = ", ".join(model.model_fields)
            lines.append(f"  {loc} (from {source}): unknown key; allowed keys: {allowed}")
            continue
        value = _describe_value(loc, merged.get(loc, err.get("input")))
        message = err["msg"]
        lines.append(f"  {loc} = {value} (from {source}): {message}")
    return "\n".join(lines)


def settings_table(resolved: ResolvedConfig) -> list[tuple[str, str, str]]:
    """Rows of (key, printable value, source) with secrets masked."""
    rows: list[tuple[str, str, str]] = []
    data = resolved.settings.model_dump()
    for name, value in data.items():
        if isinstance(value, dict) and name in SECTIONS:
            for leaf, leaf_value in value.items():
                dotted = f"{name}.{leaf}"
                rows.append((dotted, mask(dotted, leaf_value), resolved.sources.get(dotted, "")))
        else:
            rows.append((name, mask(name, value), resolved.sources.get(name, "")))
    return rows


def mask(dotted: str, value: Any) -> str:
    """Printable value; secrets show only whether they are set."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if is_secret_key(dotted):
        return "<unset>" if not value else "<set, hidden>"
    if value is None:
        return "<unset>"
    if isinstance(value, str) and "\n" in value:
        value = value.replace("\n", " ")
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
