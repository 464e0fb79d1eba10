"""LMTP: the websocket protocol between LMQL clients and inference servers."""
