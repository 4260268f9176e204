"""The serving graph: `build_app(args)` is the import_path of `serve run cluster/config.yaml`.

    HTTP ─► Ingress (auth, OpenAI schema) ──► Gateway (rate limits, response cache: one, shared)
               ├──────► Preprocessor (tokenize, chat template, params, limits, input safety)
               └──────► Postprocessor (format, output safety) ──► LLMServer ×N (engine; token stream)

Pre- and Postprocessor run inside each ingress replica by default (they are light, and every Serve hop
costs milliseconds of time to first token: measured in benchmarks/serve_bench.py); with
`serve.split_processing` (or a safety classifier model) they are deployments of their own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from raygen.config import RaygenConfig, load_config
from raygen.registry import Registry
from raygen.serve.gateway import Gateway
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


def _llm_options(s) -> dict:
    """Replica resources and scaling: one GPU per replica when the cluster has GPUs, CPUs otherwise."""
    import ray

    gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    actor = {"num_cpus": s.llm_num_cpus, **({"num_gpus": 1} if gpus else {}),
             **({"label_selector": s.llm_label_selector} if s.llm_label_selector else {})}
    opts: dict = {"ray_actor_options": actor, "max_ongoing_requests": s.llm_max_ongoing_requests,
                  "max_queued_requests": s.llm_max_queued_requests,
                  "request_router_config": RequestRouterConfig(
                      request_router_class="raygen.serve.router:PrefixAwareRouter",
                      request_router_kwargs={"chunk": s.router_chunk_tokens, "margin": s.router_load_margin},
                      request_routing_stats_period_s=1.0, request_routing_stats_timeout_s=5.0)}
    if s.llm_max_replicas_per_node:
        opts["max_replicas_per_node"] = s.llm_max_replicas_per_node
    if s.autoscaling:
        a = s.autoscaling
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "target_ongoing_requests": a.target_ongoing_requests}
    else:
        opts["num_replicas"] = s.llm_replicas
    return opts


def build_graph(cfg: RaygenConfig) -> Application:
    version, model_dir = Registry(cfg.registry.root).resolve(cfg.registry.name, cfg.serve.version)
    s = cfg.serve
    obs, name = cfg.observability, cfg.registry.name
    llm = LLMServer.options(**_llm_options(s)).bind(
        model_dir=str(model_dir), engine=s.engine, torch_threads=s.torch_threads, model_name=name,
        observability=obs, version=version, retry_after_s=s.retry_after_s)
    safety = s.safety
    pre_args = dict(model_dir=str(model_dir), max_tokens_default=s.max_tokens_default,
                    max_tokens_limit=s.max_tokens_limit, system_prompt=s.system_prompt, truncation=s.truncation,
                    safety=safety, max_prompt_tokens=s.max_prompt_tokens, model_name=name, observability=obs,
                    tool_parser=s.tool_parser)
    post_args = dict(model_dir=str(model_dir), safety=safety, model_name=name, observability=obs)
    if s.split_processing or s.safety.classifier:
        # Own deployments: scale tokenization and output checks (a classifier model) apart from the HTTP edge.
        pre = _on_http_nodes(Preprocessor, s).bind(**pre_args)
        post = _on_http_nodes(Postprocessor, s).bind(llm, **post_args)
    else:
        # In the ingress process: two Serve hops fewer on every request (benchmarks/serve_bench.py).
        pre, post = pre_args, post_args
    rl = s.rate_limit
    key_caps = {k.name: k.max_concurrent for k in s.auth.keys if k.max_concurrent}
    gateway = _on_http_nodes(Gateway, s).bind(rate_limit=rl, cache=s.cache, version=version, key_caps=key_caps)
    return _on_http_nodes(Ingress, s).options(num_replicas=s.ingress_replicas, max_ongoing_requests=s.ingress_max_ongoing_requests,
                           max_queued_requests=s.ingress_max_queued_requests).bind(
        preprocessor=pre, postprocessor=post, gateway=gateway, llm=llm, model_name=cfg.registry.name,
        version=version, max_body_bytes=s.max_body_bytes, auth=s.auth,
        rate_limited=rl.enabled or rl.max_concurrent_per_key is not None or bool(key_caps), cached=s.cache.enabled,
        near_cache_s=s.cache.near_ttl_s, observability=obs, gateway_failure=rl.on_gateway_failure,
        gateway_timeout_s=rl.gateway_timeout_s, retry_after_s=s.retry_after_s, max_inflight=_max_inflight(s))


def _on_http_nodes(deployment, s):
    """The deployment on nodes with serve.http_label_selector's labels (its own actor options kept)."""
    if not s.http_label_selector:
        return deployment
    return deployment.options(ray_actor_options={**(deployment.ray_actor_options or {}),
                                                 "label_selector": s.http_label_selector})


def _max_inflight(s) -> int:
    """What one ingress replica lets through to the model replicas: their capacity unless set."""
    if s.ingress_max_inflight is not None:
        return s.ingress_max_inflight
    replicas = s.autoscaling.max_replicas if s.autoscaling else s.llm_replicas
    return replicas * s.llm_max_ongoing_requests + s.llm_max_queued_requests


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args or {})
    return build_graph(load_config(a.config, a.overrides))


def run(cfg: RaygenConfig) -> str:
    """Start Serve's HTTP proxy on cfg.serve.host:port, deploy the graph, wait until it is healthy; start the
    cluster's alert evaluator when observability.alerts.enabled."""
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port},
                proxy_location=cfg.serve.proxy_location)
    serve.run(build_graph(cfg), name=APP_NAME, route_prefix="/")
    if cfg.observability.alerts.enabled:
        from raygen.observability.alert_actor import start_alerts

        start_alerts(cfg.observability.alerts)
    return f"http://{cfg.serve.host}:{cfg.serve.port}"
