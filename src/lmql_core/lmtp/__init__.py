"""LMTP: the websocket protocol between LMQL clients and inference servers.

- ``wire``: the protocol itself: frames, the rules for requests, the wire form of tokens. It
  knows nothing of the engine.
- ``server``: the websocket server (``server.app``) with one ``server.session`` per connection,
  which validates requests and turns them into engine sequences, and its plumbing (connection
  limits, metrics, GC pauses).
- ``client``: client transports (``client.transport``) on the process's client loop (``client.loop``).
- ``local``: the ``local:`` transport: a client on a server session in the same process.
"""
