"""The ASR engine over WebSocket: many bots, one engine (``voice-agent asr-server``).

No Pipecat and no ``agent`` imports here: the server, its protocol and its client stand alone.
"""

from .client import ASRClient, ASRRejectedError, ASRServerError
from .protocol import PROTOCOL_VERSION, TOKEN_ENV
from .server import ASRServer, ServerConfig

__all__ = [
    "ASRClient",
    "ASRRejectedError",
    "ASRServer",
    "ASRServerError",
    "PROTOCOL_VERSION",
    "ServerConfig",
    "TOKEN_ENV",
]
