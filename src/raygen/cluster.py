"""Joining Ray: the cluster in RAY_ADDRESS when set (or when running under `ray job submit`), else a local one."""

from __future__ import annotations

import os

import ray

# Ray Serve's low-latency request path (measured in benchmarks/serve_bench.py: about 10 ms off the
# graph's time to first token on 2 cores): user code on the replica's own event loop, the router on the
# caller's loop, gRPC between replicas. Read by every Serve process at start, so they belong in the
# environment of `ray start` on each node (cluster/) or of the process that starts a local Ray (here).
SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
             "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}


def serve_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """env (default: os.environ) with SERVE_ENV's defaults filled in where unset."""
    env = dict(os.environ if env is None else env)
    return {**SERVE_ENV, **env}


def init_ray(num_cpus: int | None = None) -> str | None:
    """Connect or start Ray; return the dashboard URL (None when the dashboard is off)."""
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return getattr(ctx, "dashboard_url", None)
    address = os.environ.get("RAY_ADDRESS")
    if not address:  # a local Ray started here inherits this process's environment
        os.environ.update(serve_env())
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": True,
                                                   "dashboard_host": "127.0.0.1"}
    info = ray.init(log_to_driver=True, **kwargs)
    url = info.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url
