"""The LMTP server: the aiohttp app (``app``), a ``session`` per client, and their plumbing."""
