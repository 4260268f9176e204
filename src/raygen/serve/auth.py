"""API keys: loaded from config, an env var or a file; kept only as SHA-256 hashes; per-key scopes.

Pure Python. A key is presented as `Authorization: Bearer <key>` (or `x-api-key`). Keys are never
logged: a key is named by its `name` everywhere. With no keys configured, auth is off (local use).

Sources, merged:
    config   serve.auth.keys: [{name, key | key_sha256, models: [...] | null, admin: bool, max_concurrent}]
    env      RAYGEN_API_KEYS="name1:key1,name2:key2"   (all models, not admin)
    file     serve.auth.keys_file: one "name:key[:model1|model2][:admin]" per line; # comments
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from raygen.errors import ConfigError, RequestError
from raygen.serve.config import ApiKeyEntry

ENV_VAR = "RAYGEN_API_KEYS"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: frozenset[str] | None = None  # None: every model
    admin: bool = False


ANONYMOUS = ApiKey("anonymous", "", None, False)


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self._by_hash = {k.sha256: k for k in keys}
        if len(self._by_hash) != len(keys):
            raise ConfigError("two API keys are the same key; give each client its own")

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    @classmethod
    def load(cls, entries: list[ApiKeyEntry | dict] | None = None, keys_file: str | None = None,
             env: bool = True) -> KeyStore:
        """entries: serve.auth.keys (dicts are validated as ApiKeyEntry)."""
        keys = []
        for i, e in enumerate(entries or []):
            e = e if isinstance(e, ApiKeyEntry) else ApiKeyEntry.model_validate(e)
            if (e.key is None) == (e.key_sha256 is None):
                raise ConfigError(f"serve.auth.keys[{i}] ({e.name}): give exactly one of key, key_sha256")
            h = digest(e.key) if e.key is not None else e.key_sha256.lower()
            keys.append(ApiKey(e.name, h, frozenset(e.models) if e.models is not None else None, e.admin))
        if env and os.environ.get(ENV_VAR):
            for i, item in enumerate(os.environ[ENV_VAR].split(",")):
                name, sep, key = item.strip().partition(":")
                if not sep or not key:
                    raise ConfigError(f"{ENV_VAR} item {i + 1} is not name:key")
                keys.append(ApiKey(name, digest(key)))
        if keys_file:
            path = Path(keys_file)
            if not path.is_file():
                raise ConfigError(f"serve.auth.keys_file {path} does not exist")
            for n, line in enumerate(path.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split(":")
                if len(parts) < 2 or not parts[1]:
                    raise ConfigError(f"{path}:{n}: expected name:key[:model1|model2][:admin]")
                models = frozenset(parts[2].split("|")) if len(parts) > 2 and parts[2] else None
                keys.append(ApiKey(parts[0], digest(parts[1]), models, len(parts) > 3 and parts[3] == "admin"))
        return cls(keys)

    def authenticate(self, authorization: str | None, x_api_key: str | None = None) -> ApiKey:
        if not self.enabled:
            return ANONYMOUS
        token = x_api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            raise RequestError("no API key: send 'Authorization: Bearer <key>'", status=401,
                               type="authentication_error", code="missing_api_key")
        h = digest(token)
        for stored, key in self._by_hash.items():  # constant-time compare over every key
            if hmac.compare_digest(stored, h):
                return key
        raise RequestError("invalid API key", status=401, type="authentication_error", code="invalid_api_key")

    @staticmethod
    def authorize(key: ApiKey, model: str) -> None:
        if key.models is not None and model not in key.models:
            raise RequestError(f"API key {key.name!r} may not use model {model!r}", status=403,
                               type="permission_error", code="model_not_allowed", param="model")
