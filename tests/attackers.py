"""Clients that misbehave at the socket level, written over plain sockets: a websocket that
never reads (with a small receive buffer), raw HTTP requests with any header bytes, and a
reader for what such a socket received. aiohttp's client reads and buffers on its own, so it
cannot play these parts."""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.request
from typing import Any


def connect(endpoint: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = endpoint.rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf:  # set before connecting, so the window the server sees stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return sock


def http_status(endpoint: str, request_head: bytes) -> int:
    """Send a raw HTTP request head; the status code of the answer."""
    with connect(endpoint) as sock:
        sock.settimeout(10)
        sock.sendall(request_head)
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def upgrade_request(endpoint: str, extra_headers: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET / HTTP/1.1\r\nHost: " + endpoint.encode() + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            + extra_headers + b"\r\n")


def open_websocket(endpoint: str, rcvbuf: int | None = None) -> socket.socket:
    """A websocket over a plain socket, handshake done; nothing is read unless asked."""
    sock = connect(endpoint, rcvbuf)
    sock.settimeout(30)
    sock.sendall(upgrade_request(endpoint))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: what follows the head belongs to the frames
        assert chunk, "the server closed the connection during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def text_frame(text: str) -> bytes:
    """A client's (masked) websocket text frame."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return bytes([0x81]) + length + mask + masked


def send_frame(sock: socket.socket, command: str, payload: Any) -> None:
    sock.sendall(text_frame(f"{command} {json.dumps(payload)}"))


def read_frames(sock: socket.socket, idle_s: float = 2.0) -> list[tuple[str, Any]]:
    """Every frame the server sends until it goes quiet for ``idle_s`` or closes."""
    sock.settimeout(idle_s)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, n, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if n >= 126:
            width = 2 if n == 126 else 8
            n, at = int.from_bytes(data[at:at + width], "big"), at + width
        if at + n > len(data):
            break
        if opcode == 1:
            command, _, body = data[at:at + n].decode().partition(" ")
            frames.append((command, json.loads(body)))
        at += n
    return frames


def health(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{endpoint}/health", timeout=10) as response:
        return dict(json.loads(response.read()))
