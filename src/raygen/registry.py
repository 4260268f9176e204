"""The model registry: the seam between training and serving. Plain files (no database, no Ray), on a local
disk or in object storage (`registry.root: s3://bucket/models`), so every node of a cluster sees it.

    <root>/<name>/v1/                 a Hugging Face model directory (config, safetensors, tokenizer,
    <root>/<name>/v2/                 generation config) and raygen.json, the card, written last: a version
                                      exists once its card does, so a half-uploaded one is never served
    <root>/<name>/_aliases/latest     {"version": "v2", ...}: one object per alias, replaced whole
    <root>/<name>/_claims/v3/<id>     who is writing v3 (see `_claim`)
    <root>/<name>/latest -> v2        on a local disk only: a symlink view, so that
                                      `AutoModelForCausalLM.from_pretrained("<root>/<name>/latest")` works
                                      without raygen

Object storage has no rename, no symlink and no lock. What stands in for them:
- An alias is one small object, and a PUT replaces an object whole. Two concurrent promotes of one alias
  leave one of the two versions, never a mix, and every other alias untouched.
- A version number is claimed before anything is written: a writer puts `_claims/vN/<its id>`, lists
  `_claims/vN/`, and owns vN only if its claim is the only one there. S3, GCS and local disks list what
  was written before (strong read-after-write), so of two writers the later one always sees the earlier
  claim: at most one wins. A writer that sees another claim withdraws, waits a random moment and tries
  the next free number, so concurrent registrations get distinct versions and none is lost (a number
  may be skipped under contention, as a database sequence skips).
Serving reads a version through `local_dir`: a local registry is read in place, a remote version is
downloaded once per node into raygen's cache (versions never change, so the cache needs no invalidation).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time
import uuid
from pathlib import Path

from pydantic import Field

from raygen._config_base import ConfigModel
from raygen.errors import RegistryError
from raygen.storage import Location, local_copy

_VERSION = re.compile(r"^v(\d+)$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CARD = "raygen.json"
ALIASES, CLAIMS = "_aliases", "_claims"
_CLAIM_TRIES = 30


class RegistryConfig(ConfigModel):
    root: str = Field("models", description="Registry root: a directory or a URI (s3://bucket/models); "
                                            "<root>/<name>/<version>/.")
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Model name.")


class Registry:
    def __init__(self, root: str | os.PathLike | Location):
        self.root = Location(root)

    def versions(self, name: str) -> list[str]:
        """Committed versions (their card exists), oldest first."""
        found = [d.name for d in (self.root / name).iterdir() if _VERSION.match(d.name) and (d / CARD).is_file()]
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self, name: str) -> dict[str, str]:
        found = {f.name: json.loads(f.read_text())["version"] for f in (self.root / name / ALIASES).iterdir()}
        d = self.root.local_path / name if self.root.is_local else None
        if d is not None and d.is_dir():  # a registry from before _aliases/: its symlinks are its aliases
            found |= {p.name: os.readlink(p) for p in d.iterdir() if p.is_symlink() and p.name not in found}
        return dict(sorted(found.items()))

    def register(self, name: str, model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None,
                 card: dict, extras: dict[str, bytes | str] | None = None) -> str:
        """Copy a HF model (and tokenizer) in as the next version, with its card (and extra files such as
        README.md or a loss-curve PNG); point `latest` at it."""
        src = Path(model_dir)
        if not (src / "config.json").is_file():
            raise RegistryError(f"{src} is not a Hugging Face model directory (config.json missing)")
        version = self._claim(name)
        dst = self.root / name / version
        dst.upload(src)
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file():
                    (dst / f.name).write_bytes(f.read_bytes())
        for fname, content in (extras or {}).items():
            (dst / fname).write_bytes(content.encode() if isinstance(content, str) else content)
        card = {"name": name, "version": version, "registered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **card}
        (dst / CARD).write_text(json.dumps(card, indent=2, default=str))  # the commit: now it is a version
        self._point_latest(name)
        return version

    def _point_latest(self, name: str) -> None:
        """`latest` = the highest committed version, also when registrations finish out of order: write the
        highest seen, look again, repeat while a higher one has appeared. The last writer's second look
        comes after every commit that preceded its write, so the alias ends on the true highest."""
        written = None
        while (top := self.versions(name)[-1]) != written:
            self.set_alias(name, "latest", top)
            written = top

    def _claim(self, name: str) -> str:
        """Own the next free version number (the protocol is in the module docstring)."""
        me = uuid.uuid4().hex
        claims = self.root / name / CLAIMS
        for attempt in range(_CLAIM_TRIES):
            taken = [d.name for d in (self.root / name).iterdir() if _VERSION.match(d.name)]
            taken += {rel.split("/")[0] for rel, _ in claims.files()}
            version = f"v{max((int(v[1:]) for v in taken), default=0) + 1}"
            mine = claims / version / me
            mine.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}))
            if [c.name for c in (claims / version).iterdir()] == [me]:
                return version
            mine.delete()
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise RegistryError(f"could not claim a version of {name!r} in {self.root} after {_CLAIM_TRIES} tries: "
                            "too many registrations at once; retry")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point alias at a version (or at what another alias points at). One object, replaced whole."""
        if not _ALIAS.match(alias) or _VERSION.match(alias):
            raise RegistryError(f"alias {alias!r} must be a word like 'production' (not a version like v3)")
        version = self._version_of(name, version)
        record = {"version": version, "set_at": time.time(), "by": f"{socket.gethostname()}:{os.getpid()}"}
        (self.root / name / ALIASES / alias).write_text(json.dumps(record))
        if self.root.is_local:
            self._symlink_view(name, alias, version)

    def _symlink_view(self, name: str, alias: str, version: str) -> None:
        d = self.root.local_path / name
        tmp = d / f".{alias}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(version, tmp)
        os.replace(tmp, d / alias)

    def _version_of(self, name: str, version_or_alias: str) -> str:
        versions = self.versions(name)
        if version_or_alias in versions:
            return version_or_alias
        aliases = self.aliases(name)
        if version_or_alias in aliases:
            return aliases[version_or_alias]
        if not versions:
            known = sorted(d.name for d in self.root.iterdir())
            raise RegistryError(f"no model named {name!r} in registry {self.root} (models: {known or 'none'}); "
                                "train one first (`raygen demo` or pipelines/train.py)")
        raise RegistryError(f"model {name!r} has no version or alias {version_or_alias!r}; versions: "
                            f"{versions}, aliases: {sorted(aliases)}")

    def resolve(self, name: str, version_or_alias: str = "latest") -> tuple[str, Location]:
        """(concrete version, where it is) for a version or an alias."""
        version = self._version_of(name, version_or_alias)
        return version, self.root / name / version

    def local_dir(self, name: str, version_or_alias: str = "latest") -> Path:
        """A local directory holding the version: in place on a local disk, else downloaded once per node."""
        return local_model_dir(self.resolve(name, version_or_alias)[1])

    def card(self, name: str, version_or_alias: str = "latest") -> dict:
        _, where = self.resolve(name, version_or_alias)
        return json.loads((where / CARD).read_text())


def local_model_dir(model: str | os.PathLike | Location) -> Path:
    """A model directory on this node: a local path as it is, a registry version's URI (s3://.../v3) from
    raygen's cache, downloaded on first use. What every serving process calls before loading a model."""
    return local_copy(model, CARD)
