"""One config tree for every component: it composes the configs each package owns (data/config.py,
train/config.py, serve/config.py, engine/config.py, observability/config.py, registry.py) and loads YAML,
with errors that name the key and the file.

The same file feeds the CLI (`raygen demo --config F`), the Ray jobs (`pipelines/*.py --config F`) and
`serve run` (cluster/config.yaml passes `config:` to `raygen.serve.app:build_app`). Defaults are the demo:
they run on a 2-core laptop; scale out by changing numbers, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from raygen import paths
from raygen._config_base import ConfigModel
from raygen.data.config import DataConfig, FeaturesConfig
from raygen.errors import ConfigError
from raygen.observability.config import ObservabilitySettings
from raygen.registry import RegistryConfig
from raygen.serve.config import ServeConfig
from raygen.train.config import ModelConfig, TrainConfig, TuneSettings

__all__ = ["RaygenConfig", "load_config", "validate_config"]


class RaygenConfig(ConfigModel):
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    def resolved(self) -> RaygenConfig:
        """A copy whose local paths are absolute (Ray workers run in other directories); URIs stay as they are."""
        out = self.model_copy(deep=True)
        out.data.paths = [paths.location(p) for p in self.data.paths]
        out.data.output_dir = paths.location(self.data.output_dir)
        out.train.storage_path = paths.location(self.train.storage_path)
        out.registry.root = paths.location(self.registry.root)
        return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; the fields are in the component's config.py)")
        else:
            got = repr(err.get("input"))
            lines.append(f"  {key}: {err['msg']} (got {got if len(got) <= 120 else got[:117] + '...'})")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=20")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RaygenConfig:
    """Read YAML (or the defaults), apply `section.key=value` overrides, validate, resolve paths."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "config") -> RaygenConfig:
    try:
        return RaygenConfig.model_validate(raw).resolved()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
