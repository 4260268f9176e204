"""Alert signals, each defined once as a small expression tree that renders both ways: PromQL (the
generated Prometheus rules and Grafana panels) and a value over a Window of two scrapes (the in-cluster
evaluator). Scrapes are parsed by prometheus_client. Pure: no Ray.

Names are as scraped (Ray prefixes `ray_`: see metrics.py). A range (`5m`) is PromQL's; the evaluator's
window is the time between its two scrapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Samples = dict[tuple[str, Labels], float]  # (metric name, labels) -> value, as scraped


def parse_prometheus_text(text: str) -> Samples:
    """Samples from Prometheus' text exposition format (what Ray's metrics endpoint serves)."""
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class Window:
    prev: Samples
    now: Samples
    seconds: float  # between the two scrapes

    def select(self, samples: Samples, name: str, match: dict[str, str] | None = None) -> list[tuple[Labels, float]]:
        """(labels, value) of the series of `name` whose labels fully match the regexes in `match`."""
        res = []
        for (n, labels), v in samples.items():
            d = dict(labels)
            if n == name and all(re.fullmatch(pat, d.get(k, "")) for k, pat in (match or {}).items()):
                res.append((labels, v))
        return res

    def delta(self, name: str, match: dict[str, str] | None = None) -> float | None:
        """Increase of a counter (summed over its series) between the scrapes; None if it does not exist."""
        now = self.select(self.now, name, match)
        if not now:
            return None
        prev = dict(self.select(self.prev, name, match))
        # A series that restarted (its process did) counts from zero, as Prometheus' increase() does.
        return sum(v - prev.get(labels, 0.0) if v >= prev.get(labels, 0.0) else v for labels, v in now)

    def gauge(self, name: str, agg: Callable = max, match: dict[str, str] | None = None) -> float | None:
        vals = [v for _, v in self.select(self.now, name, match)]
        return agg(vals) if vals else None

    def quantile(self, q: float, name: str) -> float | None:
        """histogram_quantile over the buckets' increase (linear within a bucket, as Prometheus does)."""
        buckets: dict[float, float] = {}
        prev = dict(self.select(self.prev, f"{name}_bucket"))
        for labels, v in self.select(self.now, f"{name}_bucket"):
            le = dict(labels).get("le")
            if le is not None:
                bound = float(le)  # "+Inf" parses to inf
                buckets[bound] = buckets.get(bound, 0.0) + max(0.0, v - prev.get(labels, 0.0))
        if not buckets or buckets.get(math.inf, 0.0) <= 0:
            return None
        rank, lower, below = q * buckets[math.inf], 0.0, 0.0
        for bound in sorted(buckets):
            count = buckets[bound]
            if count >= rank:
                if bound == math.inf:
                    return lower
                span = count - below
                return lower + (bound - lower) * ((rank - below) / span if span > 0 else 1.0)
            lower, below = bound, count
        return lower


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


# -- the expression tree -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """A metric's series, optionally filtered by label regexes: `name{label=~"regex"}`."""

    name: str
    match: tuple[tuple[str, str], ...] = ()

    def promql(self) -> str:
        inner = ",".join(f'{k}=~"{v}"' for k, v in self.match)
        return f"{self.name}{{{inner}}}" if inner else self.name

    def where(self) -> dict[str, str]:
        return dict(self.match)


@dataclass(frozen=True)
class Increase:
    series: Series
    range: str

    def promql(self) -> str:
        return f"sum(increase({self.series.promql()}[{self.range}]))"

    def value(self, w: Window) -> float | None:
        return w.delta(self.series.name, self.series.where())


@dataclass(frozen=True)
class Rate(Increase):
    def promql(self) -> str:
        return f"sum(rate({self.series.promql()}[{self.range}]))"

    def value(self, w: Window) -> float | None:
        return _ratio(super().value(w), w.seconds)


@dataclass(frozen=True)
class Quantile:
    q: float
    histogram: str  # the metric's name, without _bucket
    range: str

    def promql(self) -> str:
        return f"histogram_quantile({self.q}, sum by (le) (rate({self.histogram}_bucket[{self.range}])))"

    def value(self, w: Window) -> float | None:
        return w.quantile(self.q, self.histogram)


@dataclass(frozen=True)
class Max:
    """The largest value of a gauge across its series."""

    series: Series

    def promql(self) -> str:
        return f"max({self.series.promql()})"

    def value(self, w: Window) -> float | None:
        return w.gauge(self.series.name, max, self.series.where())


@dataclass(frozen=True)
class AnyNaN:
    """1 when a series of the gauge is NaN, else 0 (`x != bool x` holds only for NaN)."""

    series: Series

    def promql(self) -> str:
        s = self.series.promql()
        return f"max({s} != bool {s})"

    def value(self, w: Window) -> float | None:
        vals = [v for _, v in w.select(w.now, self.series.name, self.series.where())]
        return float(any(math.isnan(v) for v in vals)) if vals else None


@dataclass(frozen=True)
class MaxRatio:
    """The largest a/b over series with the same labels (PromQL's one-to-one vector matching)."""

    a: Series
    b: Series

    def promql(self) -> str:
        return f"max({self.a.promql()} / {self.b.promql()})"

    def value(self, w: Window) -> float | None:
        den = dict(w.select(w.now, self.b.name, self.b.where()))
        ratios = [_ratio(v, den.get(labels)) for labels, v in w.select(w.now, self.a.name, self.a.where())]
        return max((r for r in ratios if r is not None), default=None)


@dataclass(frozen=True)
class Ratio:
    """num / den; a numerator with no series yet counts as 0 (`or vector(0)`), as no errors yet is 0%."""

    num: Increase
    den: Increase

    def promql(self) -> str:
        return f"({self.num.promql()} or vector(0)) / {self.den.promql()}"

    def value(self, w: Window) -> float | None:
        return _ratio(self.num.value(w) or 0.0, self.den.value(w))


Expr = Increase | Quantile | Max | AnyNaN | MaxRatio | Ratio


@dataclass(frozen=True)
class Signal:
    expr: Expr
    help: str

    @property
    def promql(self) -> str:
        return self.expr.promql()

    def value(self, w: Window) -> float | None:
        return self.expr.value(w)


_REQUESTS, _LOSS = "ray_raygen_requests_total", "ray_raygen_train_loss"
SIGNALS: dict[str, Signal] = {
    "error_rate": Signal(Ratio(Rate(Series(_REQUESTS, (("status", "5.."),)), "5m"), Rate(Series(_REQUESTS), "5m")),
                         "share of requests answered with a 5xx"),
    "ttft_p99_seconds": Signal(Quantile(0.99, "ray_raygen_ttft_seconds", "5m"), "99th percentile time to first token"),
    "kv_cache_usage": Signal(Max(Series("ray_raygen_kv_cache_usage_ratio")),
                             "fullest replica's share of KV-cache blocks in use"),
    "replica_starts": Signal(Increase(Series("ray_raygen_llm_replica_starts_total"), "10m"),
                             "model replicas started in the window (restarts, or a fast scale-out)"),
    "rate_limited_per_second": Signal(Rate(Series("ray_raygen_rate_limited_total"), "5m"),
                                      "requests refused with 429 per second"),
    "safety_blocks_per_second": Signal(Rate(Series("ray_raygen_safety_blocks_total"), "5m"),
                                       "safety-filter blocks per second"),
    "train_loss_nan": Signal(AnyNaN(Series(_LOSS)), "1 when a training run's loss is NaN"),
    "train_loss_ratio": Signal(MaxRatio(Series(_LOSS), Series("ray_raygen_train_loss_min")),
                               "training loss over its best so far, per run (diverging when well above 1)"),
    "data_drop_ratio": Signal(Ratio(Increase(Series("ray_raygen_data_dropped_total"), "1h"),
                                    Increase(Series("ray_raygen_data_documents_total", (("outcome", "read"),)), "1h")),
                              "share of input documents dropped by the data stages"),
}
