"""Joining Ray: the cluster in RAY_ADDRESS when set (or when running under `ray job submit`), else a local one."""

from __future__ import annotations

import os

import ray


def init_ray(num_cpus: int | None = None) -> str | None:
    """Connect or start Ray; return the dashboard URL (None when the dashboard is off)."""
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return getattr(ctx, "dashboard_url", None)
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": True,
                                                   "dashboard_host": "127.0.0.1"}
    info = ray.init(log_to_driver=True, **kwargs)
    url = info.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url
