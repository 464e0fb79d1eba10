"""Server start-up: bind, load, serve LMTP and OpenAI's HTTP API until SIGTERM (``lmql serve-model``,
``lmql.serve``)."""
