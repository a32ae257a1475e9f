"""What an LLM sends a TTS for one reply, for feeding TTS services in tests."""

from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame


def reply(*texts: str) -> list:
    """The frames an LLM produces for one reply."""
    return [
        LLMFullResponseStartFrame(),
        *[LLMTextFrame(t) for t in texts],
        LLMFullResponseEndFrame(),
    ]
