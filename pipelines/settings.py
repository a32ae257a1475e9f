"""The settings type: one typed object for the whole agent, validated by pydantic.

It lives here, below ``agent/``, so the pipeline builders in ``pipelines/backends/`` can take it
without importing the CLI layer. Loading it from defaults, profiles, TOML, ``.env``, the
environment and ``--set`` is ``agent.config``'s job (which re-exports these names).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_NEMOTRON_MODEL = "nvidia/nemotron-speech-streaming-en-0.6b"
DEFAULT_MAGPIE_MODEL = "nvidia/magpie_tts_multilingual_357m"
# What listeners say to keep a speaker going (turn.backchannels; pipelines/barge_in.py matches
# them whole, folding case, punctuation, hyphens and repeated letters).
DEFAULT_BACKCHANNELS = (
    "uh-huh",
    "mm-hmm",
    "mhm",
    "hmm",
    "mm",
    "okay",
    "ok",
    "yeah",
    "yep",
    "yes",
    "right",
    "sure",
    "oh",
    "i see",
    "got it",
    "all right",
    "alright",
)
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your answers are spoken aloud, so keep them short, "
    "plain and conversational: no lists, no markdown, no emoji."
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TransportSettings(_Section):
    """How browsers, clients and phone calls reach the bot."""

    # twilio / telnyx / plivo / exotel: phone calls, as media streams on the runner's /ws.
    type: Literal["webrtc", "daily", "twilio", "telnyx", "plivo", "exotel"] = "webrtc"
    host: str = "localhost"
    port: int = Field(7860, ge=1, le=65535)
    # The public host name (e.g. abc.ngrok.app) providers reach this agent on: the runner's
    # TwiML/XML answer at POST / tells the provider to stream to wss://<proxy>/ws.
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _host_only(cls, value: str | None) -> str | None:
        # A pasted URL (https://abc.ngrok.app/) works too: the answer adds the scheme and path.
        if value is None:
            return None
        host = value.strip().split("://", 1)[-1].rstrip("/")
        return host or None


class STTSettings(_Section):
    """Speech recognition backend and its options."""

    backend: str = "nemotron"
    model: str = DEFAULT_NEMOTRON_MODEL
    device: str = "auto"
    dtype: Literal["fp32", "bf16"] = "bf16"
    chunk_ms: Literal[80, 160, 560, 1120] = 160
    # The engine's encoder step: "fast" caches projected keys/values (~4x fewer FLOPs at 160 ms),
    # "nemo" is NeMo's own cache_aware_stream_step. Same output within float rounding.
    encoder: Literal["fast", "nemo"] = "fast"
    # Run the engine in a child process shared by the bot's sessions: their frame processing and
    # the engine's scheduler then never compete for the interpreter lock
    # (scripts/bench_stt_sessions.py). False: in this process, on a scheduler thread.
    engine_process: bool = True
    language: str = "en"
    server_url: str = "ws://127.0.0.1:8765"
    server_token: SecretStr | None = None
    # stt.backend = "remote": audio of the current utterance kept to replay on a failover to
    # another server (32 KB per second per session); a longer utterance loses its head then.
    replay_secs: float = Field(20.0, gt=0, le=300)
    # stt.backend = "whisper": encoder window for segments that fit it (0: Whisper's 30 s). 15 s
    # decodes as well as 30 s in ~40% of the time; shorter windows loop on short prompts.
    whisper_window_secs: float = Field(15.0, ge=0, le=30)
    # Segmented STTs (whisper): transcribe from the VAD's first silent window instead of after
    # vad.stop_secs, so the transcript is ready when the VAD stops (dropped if speech resumes).
    early_transcript: bool = True

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


class LLMSettings(_Section):
    """The language model: a preset fills base_url, model and key conventions."""

    preset: str = "openai"
    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    thinking: bool = False
    extra_body: dict[str, Any] = Field(default_factory=dict)
    gguf_path: str | None = None
    # The model's context window in tokens: every request (system prompt, conversation and room
    # for the reply) is kept inside it. The embedded llama.cpp server (preset "local") is also
    # sized by it, and runs on n_threads CPU threads at the given niceness, so that the
    # agent's audio path wins a CPU both share.
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)
    n_threads_batch: int | None = Field(None, ge=1)
    niceness: int = Field(10, ge=0, le=19)
    # "auto": the embedded server serves a Q4_1 GGUF as a Q8_0 copy it makes once in the cache
    # (llama.cpp's CPU kernels prefill it ~1.7x faster, with the same answers); "off": as is.
    requantize: Literal["auto", "off"] = "auto"
    # How the conversation is kept inside n_ctx tokens: "summarize" (Pipecat's auto context
    # summarization by the LLM, trimming as the fallback), "trim" (drop the oldest turns) or
    # "auto" (trim for the embedded local model, whose summary would hold up the next reply on
    # the CPU it shares; summarize for every other endpoint).
    context_strategy: Literal["auto", "summarize", "trim"] = "auto"


class TTSSettings(_Section):
    """Speech synthesis backend and voice."""

    backend: str = "magpie"
    model: str = DEFAULT_MAGPIE_MODEL
    voice: str | None = None
    language: str = "en"
    device: str = "auto"
    server: str = "localhost:50051"
    use_ssl: bool = False
    api_key: SecretStr | None = None
    cfg_scale: float | None = Field(None, ge=0.0)
    # magpie-nim: one gRPC call per sentence, or one stream per reply (Magpie stitching).
    nim_mode: Literal["per_sentence", "stitched"] = "per_sentence"
    # A reply's first sentence is spoken from its first clause mark once it is this many
    # characters long (1: at the first clause, "Sure, "); 0 waits for the whole sentence.
    # Not used by magpie-nim, whose server aggregates the text itself.
    first_clause_min_chars: int = Field(1, ge=0, le=10_000)


class VADSettings(_Section):
    """Silero VAD on the user aggregator."""

    stop_secs: float = Field(0.2, gt=0.0, le=5.0)
    start_secs: float = Field(0.2, ge=0.0, le=5.0)
    confidence: float = Field(0.7, gt=0.0, le=1.0)
    min_volume: float = Field(0.6, ge=0.0, le=1.0)


class TurnSettings(_Section):
    """How the end of the user's turn is decided."""

    strategy: Literal["smart-turn", "timeout"] = "smart-turn"
    timeout_secs: float = Field(0.6, gt=0.0, le=10.0)
    # Smart Turn: the silence after which a turn the model judged incomplete ends anyway
    # (Pipecat's default). Shorter answers sooner a user who did finish; longer lets a user who
    # paused mid-thought go on.
    incomplete_timeout_secs: float = Field(3.0, gt=0.0, le=30.0)
    # Smart Turn: the silence after the end of speech that ends a turn the model judged
    # incomplete when its final transcript reads as a finished utterance (0.5 s: see
    # pipelines/turns.py). Transcripts that read unfinished keep incomplete_timeout_secs.
    complete_text_wait_secs: float = Field(0.5, ge=0.0, le=30.0)
    # Start the LLM on the speculative final at the VAD stop and hold its answer until the turn
    # is confirmed (dropped if the user goes on or the transcript changes).
    speculative: bool = True
    # Barge-in (pipelines/barge_in.py): what the user may say over the bot without
    # interrupting it (matched whole; [] makes any speech interrupt), and how long speech over
    # the bot may last before it interrupts without waiting for its transcript.
    backchannels: list[str] = Field(default_factory=lambda: list(DEFAULT_BACKCHANNELS))
    backchannel_max_secs: float = Field(0.8, gt=0.0, le=5.0)


class AgentSettings(_Section):
    """The whole resolved configuration."""

    profile: str = "auto"
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    transport: TransportSettings = Field(default_factory=TransportSettings)
    stt: STTSettings = Field(default_factory=STTSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    tts: TTSSettings = Field(default_factory=TTSSettings)
    vad: VADSettings = Field(default_factory=VADSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
