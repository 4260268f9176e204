"""The serving graph: `build_app(args)` is the import_path of `serve run cluster/config.yaml`.

    HTTP ─► Ingress ──► Preprocessor (tokenize, params, limits)
               └──────► Postprocessor ──► LLMServer ×N (token stream)      SSE back the same way
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from raygen.config import RaygenConfig, load_config
from raygen.registry import Registry
from raygen.serve.ingress import Ingress
from raygen.serve.llm_server import LLMServer
from raygen.serve.postprocess import Postprocessor
from raygen.serve.preprocess import Preprocessor

APP_NAME = "raygen"


class AppArgs(BaseModel):
    """`args:` of the Serve config: a raygen config file plus `section.key=value` overrides."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = Field(None, description="raygen YAML config; defaults when absent.")
    overrides: list[str] = Field(default_factory=list, description="e.g. ['serve.version=production'].")


def build_graph(cfg: RaygenConfig) -> Application:
    version, model_dir = Registry(cfg.registry.root).resolve(cfg.registry.name, cfg.serve.version)
    s = cfg.serve
    llm = LLMServer.options(num_replicas=s.llm_replicas, ray_actor_options={"num_cpus": s.llm_num_cpus}) \
        .bind(str(model_dir), s.engine.model_dump(), s.torch_threads)
    pre = Preprocessor.bind(str(model_dir), s.max_tokens_default, s.max_tokens_limit)
    post = Postprocessor.bind(llm, str(model_dir))
    return Ingress.bind(pre, post, cfg.registry.name, version, s.max_body_bytes)


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args or {})
    return build_graph(load_config(a.config, a.overrides))


def run(cfg: RaygenConfig) -> str:
    """Start Serve's HTTP proxy on cfg.serve.host:port, deploy the graph, wait until it is healthy."""
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_graph(cfg), name=APP_NAME, route_prefix="/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}"
