"""Alert rules as data, evaluated over two scrapes of the metrics. Pure: no Ray, no aiohttp (the evaluator
actor and the webhook sender are in alert_actor.py).

A rule is YAML:

    - name: HighErrorRate
      expr: error_rate > 0.05          # a Python-style expression over the SIGNALS below: comparisons,
      for: 60s                         #   and/or/not, + - * /, numbers; a signal with no data is None,
      severity: critical               #   and a comparison with None is false (no data, no alert)
      message: "{error_rate:.1%} of requests fail"

Signals (signals.py) are each defined once, as an expression tree that renders as PromQL (the generated
Prometheus rules file in cluster/) and evaluates over a Window (the previous and the current scrape), so
the in-cluster evaluator and Prometheus fire on the same condition. Rule state follows Prometheus: inactive → pending (true, not yet for
`for`) → firing → resolved (false again). Notifications are de-duplicated (one firing per episode) and
silenced for `silence` after a resolve so a flapping signal does not page every minute.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from raygen.errors import ConfigError

from raygen.observability.signals import SIGNALS, Samples, Window, parse_prometheus_text

__all__ = ["SIGNALS", "Samples", "Window", "parse_prometheus_text"]  # (defined in signals.py)

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMPOPS = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _check_expr(node: ast.AST, rule: str) -> None:
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Compare,
               ast.Name, ast.Load, ast.Constant, *_BINOPS, *_CMPOPS)
    for n in ast.walk(node):
        if not isinstance(n, allowed):
            raise ConfigError(f"alert {rule}: {type(n).__name__} is not allowed in expr (use signals, numbers, "
                              "comparisons, and/or/not, + - * /)")
        if isinstance(n, ast.Name) and n.id not in SIGNALS:
            raise ConfigError(f"alert {rule}: unknown signal {n.id!r}; signals: {', '.join(SIGNALS)}")
        if isinstance(n, ast.Constant) and not isinstance(n.value, (int, float)):
            raise ConfigError(f"alert {rule}: only numbers may appear as constants, got {n.value!r}")


def _eval(node: ast.AST, env: dict[str, float | None]):
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not v
        return None if v is None else -v
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, env) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env), _eval(node.right, env)
        if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
            return None
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, env)
            if left is None or right is None or not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    raise ConfigError(f"unsupported expression node {type(node).__name__}")


def _duration(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(v))
    if not m:
        raise ConfigError(f"duration {v!r}: use seconds or a number with ms/s/m/h, e.g. 90s or 5m")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


@dataclass
class Rule:
    name: str
    expr: str
    for_s: float = 0.0  # the condition must hold this long before the alert fires
    severity: str = "warning"
    message: str = ""
    silence_s: float = 300.0  # after a resolve, no new firing notification for this long
    _tree: ast.Expression = field(init=False, repr=False)

    def __post_init__(self):
        try:
            self._tree = ast.parse(self.expr, mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"alert {self.name}: expr {self.expr!r} is not an expression: {exc.msg}") from exc
        _check_expr(self._tree, self.name)
        if self.severity not in ("info", "warning", "critical"):
            raise ConfigError(f"alert {self.name}: severity {self.severity!r} must be info, warning or critical")

    @classmethod
    def from_dict(cls, d: dict) -> Rule:
        unknown = set(d) - {"name", "expr", "for", "severity", "message", "silence"}
        if unknown or "name" not in d or "expr" not in d:
            raise ConfigError(f"alert rule {d.get('name', d)!r}: needs name and expr; may have for, severity, "
                              f"message, silence{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
        return cls(name=d["name"], expr=d["expr"], for_s=_duration(d.get("for", 0)),
                   severity=d.get("severity", "warning"), message=d.get("message", ""),
                   silence_s=_duration(d.get("silence", 300)))

    def signals(self) -> list[str]:
        return sorted({n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name)})

    def holds(self, env: dict[str, float | None]) -> bool:
        return bool(_eval(self._tree, env))

    def render(self, env: dict[str, float | None]) -> str:
        try:
            return self.message.format(**{k: (v if v is not None else float("nan")) for k, v in env.items()})
        except (KeyError, ValueError, IndexError):
            return self.message

    def promql(self) -> str:
        """The same condition in PromQL, each signal replaced by its query."""
        out = self.expr.replace(" and ", " and on() ").replace(" or ", " or on() ")
        for name in sorted(self.signals(), key=len, reverse=True):
            out = re.sub(rf"\b{name}\b", f"({SIGNALS[name].promql})", out)
        return out


@dataclass
class Notification:
    rule: str
    status: str  # "firing" | "resolved"
    severity: str
    message: str
    at: float  # unix seconds
    values: dict[str, float | None]

    def to_json(self) -> dict:
        return {"alert": self.rule, "status": self.status, "severity": self.severity, "message": self.message,
                "at": self.at, "values": self.values}


@dataclass
class _State:
    since: float | None = None  # when the condition started holding (pending or firing)
    firing: bool = False
    notified: bool = False  # this episode's firing was sent (a silenced one was not: nor is its resolve)
    resolved_at: float = -math.inf


class AlertEvaluator:
    """Rule states over successive windows; `step` returns the notifications to send (firing, resolved)."""

    def __init__(self, rules: list[Rule]):
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"alert rule names must be unique: {sorted(n for n in names if names.count(n) > 1)}")
        self.rules = rules
        self.state = {r.name: _State() for r in rules}

    def step(self, window: Window, now: float) -> list[Notification]:
        env = {name: s.value(window) for name, s in SIGNALS.items()}
        out = []
        for rule in self.rules:
            st = self.state[rule.name]
            values = {k: env[k] for k in rule.signals()}
            if rule.holds(env):
                st.since = now if st.since is None else st.since
                if not st.firing and now - st.since >= rule.for_s:
                    st.firing = True
                    st.notified = now - st.resolved_at >= rule.silence_s  # a flap inside the silence stays quiet
                    if st.notified:
                        out.append(Notification(rule.name, "firing", rule.severity, rule.render(env), now, values))
            else:
                st.since = None
                if st.firing:
                    st.firing = False
                    st.resolved_at = now
                    if st.notified:
                        out.append(Notification(rule.name, "resolved", rule.severity, rule.render(env), now, values))
        return out

    def firing(self) -> list[str]:
        return [name for name, st in self.state.items() if st.firing]


DEFAULT_RULES = Path(__file__).with_name("default_alerts.yaml")


def load_rules(path=None) -> list[Rule]:
    """Rules from a YAML list (default: raygen's own, default_alerts.yaml)."""
    import yaml

    p = Path(path) if path else DEFAULT_RULES
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"alert rules {p}: {exc}") from exc
    if not isinstance(raw, list):
        raise ConfigError(f"alert rules {p}: must be a YAML list of rules")
    return [Rule.from_dict(d) for d in raw]


def prometheus_rules(rules: list[Rule], group: str = "raygen") -> dict:
    """The rules as a Prometheus rules file (a dict to dump as YAML)."""
    def prom_message(rule: Rule) -> str:  # {signal:fmt} → the alert's value in Prometheus' template language
        return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: "{{ $value }}", rule.message)

    return {"groups": [{"name": group, "rules": [
        {"alert": r.name, "expr": r.promql(), "for": f"{int(r.for_s)}s", "labels": {"severity": r.severity},
         "annotations": {"summary": prom_message(r)}} for r in rules]}]}

