"""Which tokenizer a client uses for a model, and checking it against the server's.

Without ``tokenizer=``, the server's own tokenizer is used when the server offers it (an LMTP
extension, advertised in MODEL_INFO), fetched once and cached on disk by fingerprint; servers
that do not offer one (LMQL 0.7) fall back to the local loaders. With ``tokenizer=``, that one
is used, but it must have the same vocabulary as the server's: a mismatch is an error, never
garbage output.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lmql_core.errors import ConnectionLost, TokenizerMismatch
from lmql_core.lmtp.client import LMTPClient
from lmql_core.loading.identifiers import ModelId
from lmql_core.loading.tokenizer import Tokenizer, from_spec, load_tokenizer


def cache_dir() -> Path:
    base = os.environ.get("LMQL_CACHE_DIR") or Path.home() / ".cache" / "lmql"
    return Path(base) / "tokenizers"


class TokenizerResolver:
    def __init__(self, model_id: ModelId, client: LMTPClient, requested: str | None,
                 server_info: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.model_id = model_id
        self.client = client
        self.requested = requested
        self.server_info = server_info
        # an explicit tokenizer loads now, so a wrong path fails at lmql.model(...)
        self._local = load_tokenizer(model_id.model, requested, model_id.backend) if requested else None
        self._resolved: Tokenizer | None = None
        self._resolved_over = -1  # the client's connection it was resolved over
        self._lock: asyncio.Lock | None = None

    async def get(self) -> Tokenizer:
        """Resolved once per connection: a reconnect may reach a server restarted with another
        model behind the same endpoint."""
        try:
            connection = await self.client.connection()
        except ConnectionLost:
            known = self._resolved or self._local
            if known is None:
                raise
            return known  # the request that follows says the server is gone
        if self._resolved is None or self._resolved_over != connection:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._resolved is None or self._resolved_over != connection:
                    try:
                        self._resolved = await self._resolve()
                    except ConnectionLost:
                        if self._local is None:
                            raise
                        return self._local  # checked against the server once it answers
                    self._resolved_over = connection
        return self._resolved

    async def _resolve(self) -> Tokenizer:
        served = await self._server_fingerprint()
        if self._local is not None:
            if served and self._local.fingerprint() != served:
                raise TokenizerMismatch(
                    f"the tokenizer '{self.requested}' does not match the one '{self.model_id.served_name}' "
                    f"is served with (vocabulary fingerprints {self._local.fingerprint()} vs {served}); "
                    "leave out tokenizer= to use the server's")
            return self._local
        if served:
            specials = await self._served_specials()
            cached = _from_cache(served, *specials) if specials else None
            return cached or await self._fetch(served)
        return load_tokenizer(self.model_id.model, None, self.model_id.backend)

    async def _server_fingerprint(self) -> str | None:
        extensions = (await self.server_info()).get("extensions")
        found = extensions.get("tokenizer") if isinstance(extensions, dict) else None
        return found if isinstance(found, str) else None

    async def _served_specials(self) -> tuple[int | None, int | None] | None:
        """(BOS, EOS) as MODEL_INFO tells them: one vocabulary may be served with other ones,
        so they are part of the cache key. None where the server does not tell BOS."""
        info = await self.server_info()
        if "bos_token_id" not in info:
            return None
        return info.get("bos_token_id"), info.get("eos_token_id")

    async def _fetch(self, fingerprint: str) -> Tokenizer:
        spec = await self.client.tokenizer(self.model_id.served_name)
        tokenizer = from_spec(spec)
        if tokenizer.fingerprint() == fingerprint:
            _store(_cache_key(fingerprint, tokenizer.bos_token_id, tokenizer.eos_token_id), spec)
        return tokenizer


def _cache_key(fingerprint: str, bos: int | None, eos: int | None) -> str:
    return f"{fingerprint}-bos{bos}-eos{eos}"


def _from_cache(fingerprint: str, bos: int | None, eos: int | None) -> Tokenizer | None:
    path = cache_dir() / f"{_cache_key(fingerprint, bos, eos)}.json"
    try:
        tokenizer = from_spec(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return None
    found = (tokenizer.fingerprint(), tokenizer.bos_token_id, tokenizer.eos_token_id)
    return tokenizer if found == (fingerprint, bos, eos) else None


def _store(key: str, spec: dict[str, Any]) -> None:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        temporary = cache_dir() / f".{key}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(spec), encoding="utf-8")
        temporary.replace(cache_dir() / f"{key}.json")
    except OSError:
        pass  # a read-only home only costs a fetch next time
