"""OpenAI's HTTP API (as vLLM and llama-server speak it), both ways.

Server: ``requests`` reads OpenAI's bodies, ``choices`` writes its answers, ``service`` runs
requests through an LMTP ``Session`` (which checks everything LMTP also has) and knows no web
framework, so any transport (the aiohttp routes in ``http``, a Ray deployment) can serve it.
Client: ``client`` is the ``openai:`` transport, LMTP requests answered by such a server.
"""
