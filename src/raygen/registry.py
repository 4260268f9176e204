"""The model registry: the seam between training and serving. Plain files, no Ray, no raygen on read.

    <root>/<name>/v1/            a Hugging Face model directory (config, safetensors, tokenizer,
    <root>/<name>/v2/            generation config) plus raygen.json, the model card
    <root>/<name>/latest -> v2   aliases are relative symlinks, swapped atomically

`AutoModelForCausalLM.from_pretrained("<root>/<name>/latest")` works without importing raygen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from pydantic import Field

from raygen._config_base import ConfigModel
from raygen.errors import RegistryError

_VERSION = re.compile(r"^v(\d+)$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CARD = "raygen.json"


class RegistryConfig(ConfigModel):
    root: str = Field("models", description="Registry directory: <root>/<name>/<version>/.")
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Model name.")


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def versions(self, name: str) -> list[str]:
        d = self.root / name
        found = [p.name for p in d.iterdir() if _VERSION.match(p.name) and not p.is_symlink()] if d.is_dir() else []
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self, name: str) -> dict[str, str]:
        d = self.root / name
        if not d.is_dir():
            return {}
        return {p.name: os.readlink(p) for p in sorted(d.iterdir()) if p.is_symlink()}

    def register(self, name: str, model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None,
                 card: dict, extras: dict[str, bytes | str] | None = None) -> str:
        """Copy a HF model (and tokenizer) in as the next version, write its card (and extra files such as
        README.md or a loss-curve PNG), point `latest` at it."""
        src = Path(model_dir)
        if not (src / "config.json").is_file():
            raise RegistryError(f"{src} is not a Hugging Face model directory (config.json missing)")
        existing = self.versions(name)
        version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
        dst = self.root / name / version
        tmp = self.root / name / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        card = {"name": name, "version": version, "registered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **card}
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str))
        for fname, content in (extras or {}).items():
            (tmp / fname).write_bytes(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, dst)  # a version appears whole or not at all
        self.set_alias(name, "latest", version)
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if not _ALIAS.match(alias) or _VERSION.match(alias):
            raise RegistryError(f"alias {alias!r} must be a word like 'production' (not a version like v3)")
        version = self._version_of(name, version)
        link = self.root / name / alias
        tmp = self.root / name / f".{alias}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(version, tmp)
        os.replace(tmp, link)

    def _version_of(self, name: str, version_or_alias: str) -> str:
        if version_or_alias in self.versions(name):
            return version_or_alias
        aliases = self.aliases(name)
        if version_or_alias in aliases:
            return aliases[version_or_alias]
        if not self.versions(name):
            known = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            raise RegistryError(f"no model named {name!r} in registry {self.root} (models: {known or 'none'}); "
                                "train one first (`raygen demo` or pipelines/train.py)")
        raise RegistryError(f"model {name!r} has no version or alias {version_or_alias!r}; versions: "
                            f"{self.versions(name)}, aliases: {sorted(aliases)}")

    def resolve(self, name: str, version_or_alias: str = "latest") -> tuple[str, Path]:
        """(concrete version, its directory) for a version or an alias."""
        version = self._version_of(name, version_or_alias)
        return version, self.root / name / version

    def card(self, name: str, version_or_alias: str = "latest") -> dict:
        _, path = self.resolve(name, version_or_alias)
        return json.loads((path / CARD).read_text())
