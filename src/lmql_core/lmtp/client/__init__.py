"""LMTP clients: transports that multiplex streams over one connection, on the client loop."""

from lmql_core.lmtp.client.transport import LMTPClient, WebSocketClient, normalize_endpoint

__all__ = ["LMTPClient", "WebSocketClient", "normalize_endpoint"]
