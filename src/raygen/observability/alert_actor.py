"""The alert evaluator as a Ray actor: every interval it scrapes Ray's Prometheus endpoints (one per node),
steps the pure AlertEvaluator over the last two scrapes and POSTs firing/resolved notifications as JSON to
every webhook (aiohttp), retrying with backoff. `start_alerts` starts one per cluster (a named actor that
lives as long as the driver or job that started it) from the `observability.alerts` config.
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray

from raygen.observability.alerts import AlertEvaluator, Rule, load_rules
from raygen.observability.signals import Samples, Window, parse_prometheus_text

log = logging.getLogger(__name__)
ACTOR_NAME = "raygen-alerts"


def metrics_urls() -> list[str]:
    """Ray's Prometheus endpoint of every live node."""
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]


@ray.remote(num_cpus=0)
class AlertManager:
    def __init__(self, rules: list[dict] | None = None, webhooks: list[str] | None = None,
                 urls: list[str] | None = None, interval_s: float = 15.0, retries: int = 3, timeout_s: float = 5.0):
        self.evaluator = AlertEvaluator([Rule.from_dict(r) for r in rules] if rules is not None else load_rules())
        self.webhooks = list(webhooks or [])
        self.urls = urls
        self.interval_s, self.retries, self.timeout_s = interval_s, retries, timeout_s
        self.prev: tuple[float, Samples] | None = None
        self.sent: list[dict] = []  # every notification delivered (or given up on), newest last
        self._loop: asyncio.Task | None = None

    async def _scrape(self, session) -> Samples:
        out: Samples = {}
        for url in self.urls or metrics_urls():
            try:
                async with session.get(url, timeout=self.timeout_s) as resp:
                    out.update(parse_prometheus_text(await resp.text()))
            except Exception as exc:  # a node going away must not stop the evaluator
                log.warning("alerts: scrape of %s failed: %s", url, exc)
        return out

    async def _send(self, session, payload: dict) -> list[str]:
        """POST to every webhook; returns the ones that took it (2xx) within the retries."""
        ok = []
        for url in self.webhooks:
            for attempt in range(self.retries + 1):
                try:
                    async with session.post(url, json=payload, timeout=self.timeout_s) as resp:
                        if 200 <= resp.status < 300:
                            ok.append(url)
                            break
                        log.warning("alerts: webhook %s answered %s", url, resp.status)
                except Exception as exc:
                    log.warning("alerts: webhook %s failed (attempt %d): %s", url, attempt + 1, exc)
                await asyncio.sleep(min(0.5 * 2**attempt, 10))
        return ok

    async def evaluate_once(self) -> list[dict]:
        """One scrape and evaluation; the notifications it sent."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            now, samples = time.time(), await self._scrape(session)
            if self.prev is None:
                self.prev = (now, samples)
                return []
            window = Window(prev=self.prev[1], now=samples, seconds=max(now - self.prev[0], 1e-6))
            self.prev = (now, samples)
            out = []
            for n in self.evaluator.step(window, now):
                payload = n.to_json()
                payload["delivered_to"] = await self._send(session, payload)
                self.sent.append(payload)
                out.append(payload)
                log.warning("alert %s %s: %s", n.rule, n.status, n.message)
            return out

    async def _run(self) -> None:
        while True:
            try:
                await self.evaluate_once()
            except Exception:
                log.exception("alerts: evaluation failed")
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    def firing(self) -> list[str]:
        return self.evaluator.firing()

    def notifications(self) -> list[dict]:
        return list(self.sent)


def start_alerts(settings) -> ray.actor.ActorHandle:
    """The cluster's AlertManager (started, or the running one) from AlertSettings; its loop is running."""
    rules = None
    if settings.rules_file:
        rules = [{"name": r.name, "expr": r.expr, "for": r.for_s, "severity": r.severity, "message": r.message,
                  "silence": r.silence_s} for r in load_rules(settings.rules_file)]  # checked here, in the driver
    actor = AlertManager.options(name=ACTOR_NAME, get_if_exists=True).remote(
        rules, settings.webhooks, settings.metrics_urls or None, settings.interval_s, settings.retries)
    ray.get(actor.start.remote())
    return actor
