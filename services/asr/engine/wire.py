"""Framing of the messages between an engine process and its front end.

Each message is a list of operations (tuples), pickled and prefixed with its length. Both ends
are our own processes, started together, so pickle is safe here; never expose this socket.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!I")
HEADER_SIZE = _HEADER.size


def encode(ops: list[tuple[Any, ...]]) -> bytes:
    """One frame carrying ``ops``."""
    body = pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def body_size(header: bytes | bytearray) -> int:
    """Length of the body that follows ``header``."""
    return _HEADER.unpack(header)[0]


def decode(body: bytes | bytearray) -> list[tuple[Any, ...]]:
    """The operations of one frame body."""
    return pickle.loads(body)


def recv_frame(sock: socket.socket) -> list[tuple[Any, ...]] | None:
    """Read one frame from a blocking socket; None at end of stream."""
    header = _recv_exact(sock, HEADER_SIZE)
    if header is None:
        return None
    body = _recv_exact(sock, body_size(header))
    if body is None:
        return None
    return decode(body)


def _recv_exact(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer
