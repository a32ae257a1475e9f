"""Config precedence (defaults < profile < file < .env < env < CLI) and bad-config errors."""

from __future__ import annotations

import textwrap

import pytest

from agent.cli import main as cli_main
from agent.config import ConfigError, load_config, settings_table

# Backends that are registered whatever else lands, so these tests pin precedence only.
BASE = """
profile = "plain"
[profiles.plain]
stt = { backend = "nemotron" }
tts = { backend = "magpie-nim" }
llm = { preset = "openai" }
"""


@pytest.fixture
def toml(tmp_path):
    def write(body: str = "") -> str:
        path = tmp_path / "agent.toml"
        path.write_text(BASE + textwrap.dedent(body))
        return str(path)

    return write


def load(path, **kwargs):
    kwargs.setdefault("env", {})
    kwargs.setdefault("dotenv_path", None)
    return load_config(path, **kwargs)


def test_defaults_match_design(toml):
    settings = load(toml()).settings
    assert settings.vad.stop_secs == 0.2
    assert settings.stt.model == "nvidia/nemotron-speech-streaming-en-0.6b"
    assert settings.stt.chunk_ms == 160
    assert settings.transport.type == "webrtc" and settings.transport.port == 7860


def test_file_then_env_then_cli(toml, tmp_path):
    path = toml(
        """
        [llm]
        model = "from-file"
        temperature = 0.1
        [stt]
        chunk_ms = 560
        """
    )
    resolved = load(path)
    assert resolved.settings.llm.model == "from-file"
    assert resolved.sources["llm.model"] == path

    env = {"VOICE_AGENT_LLM__MODEL": "from-env", "VOICE_AGENT_STT__CHUNK_MS": "80"}
    resolved = load(path, env=env)
    assert resolved.settings.llm.model == "from-env"
    assert resolved.settings.stt.chunk_ms == 80  # string from env coerced to the int literal
    assert resolved.sources["llm.model"] == "env VOICE_AGENT_LLM__MODEL"
    assert resolved.settings.llm.temperature == 0.1  # untouched keys keep the file value

    resolved = load(path, env=env, overrides={"llm.model": "from-cli"})
    assert resolved.settings.llm.model == "from-cli"
    assert resolved.sources["llm.model"] == "cli --set"
    assert resolved.sources["vad.stop_secs"] == "default"


def test_dotenv_fills_in_but_environment_wins(toml, tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("VOICE_AGENT_LLM__MODEL=from-dotenv\nVOICE_AGENT_TTS__VOICE=Aria\n")
    resolved = load(toml(), dotenv_path=dotenv, env={"VOICE_AGENT_LLM__MODEL": "from-env"})
    assert resolved.settings.llm.model == "from-env"
    assert resolved.settings.tts.voice == "Aria"
    assert resolved.sources["tts.voice"] == ".env VOICE_AGENT_TTS__VOICE"


def test_profiles_layer_below_file_and_select_by_precedence(toml):
    path = toml(
        """
        [profiles.fast]
        stt = { backend = "nemotron", chunk_ms = 80 }
        tts = { backend = "magpie-nim" }
        llm = { preset = "openai", temperature = 0.2 }
        [llm]
        temperature = 0.5
        """
    )
    assert load(path).settings.profile == "plain"
    fast = load(path, env={"VOICE_AGENT_PROFILE": "fast"}).settings
    assert fast.profile == "fast" and fast.stt.chunk_ms == 80
    assert fast.llm.temperature == 0.5  # the file's top level beats its profile
    assert (
        load(path, profile="plain", env={"VOICE_AGENT_PROFILE": "fast"}).settings.stt.chunk_ms
        == 160
    )


def test_auto_profile_follows_the_gpu(tmp_path):
    from agent.profiles import detect_default_profile

    assert detect_default_profile(cuda_available=True) == "nvidia"
    assert detect_default_profile(cuda_available=False) == "cpu"


def test_json_and_bool_values_from_env(toml):
    env = {
        "VOICE_AGENT_LLM__EXTRA_BODY": '{"top_k": 20}',
        "VOICE_AGENT_LLM__THINKING": "true",
    }
    settings = load(toml(), env=env).settings
    assert settings.llm.extra_body == {"top_k": 20}
    assert settings.llm.thinking is True


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"stt.chunk_ms": "100"}, ["stt.chunk_ms = 100", "80, 160, 560 or 1120"]),
        (
            {"transport.type": "carrier-pigeon"},
            ["transport.type", "'webrtc', 'daily', 'twilio', 'telnyx', 'plivo' or 'exotel'"],
        ),
        ({"vad.stop_secs": "-1"}, ["vad.stop_secs = -1", "greater than 0"]),
        ({"stt.device": "tpu"}, ["stt.device = 'tpu'", "'cuda:N'"]),
        ({"llm.colour": "blue"}, ["llm.colour", "unknown key", "temperature"]),
        ({"tts.backend": "nope"}, ["tts.backend = 'nope'", "allowed:", "magpie-nim"]),
        ({"stt.backend": "nope"}, ["stt.backend = 'nope'", "cli --set", "nemotron"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(toml, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load(toml(), overrides=overrides)
    for fragment in expected:
        assert fragment in str(info.value)


def test_bad_files_and_profiles(tmp_path, toml):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[llm\nmodel = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(broken))
    with pytest.raises(ConfigError, match="profile = 'nope' is not defined"):
        load(toml(), profile="nope")


def test_secrets_never_printed(toml):
    env = {"VOICE_AGENT_LLM__API_KEY": "sk-very-secret"}
    resolved = load(toml(), env=env)
    assert resolved.settings.llm.api_key.get_secret_value() == "sk-very-secret"
    rows = {key: value for key, value, _ in settings_table(resolved)}
    assert rows["llm.api_key"] == "<set, hidden>"
    assert "sk-very-secret" not in repr(resolved.settings)
    with pytest.raises(ConfigError) as info:
        load(toml(), env=env, overrides={"llm.temperature": "hot"})
    assert "sk-very-secret" not in str(info.value)


def test_config_command_shows_sources_and_masks(toml, capsys, monkeypatch):
    monkeypatch.setenv("VOICE_AGENT_LLM__API_KEY", "sk-very-secret")
    monkeypatch.setenv("VOICE_AGENT_LLM__MODEL", "my-model")
    code = cli_main(
        ["config", "-c", toml(), "--env-file", "/nonexistent", "--set", "vad.stop_secs=0.3"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "sk-very-secret" not in out
    assert "<set, hidden>" in out
    assert "env VOICE_AGENT_LLM__MODEL" in out
    assert "cli --set" in out


def test_config_command_bad_value_exit_code(toml, capsys):
    code = cli_main(
        ["config", "-c", toml(), "--env-file", "/nonexistent", "--set", "stt.chunk_ms=7"]
    )
    assert code == 2
    assert "stt.chunk_ms = 7" in capsys.readouterr().err
    assert cli_main(["config", "-c", toml(), "--set", "novalue"]) == 2
