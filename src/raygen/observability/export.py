"""Regenerate cluster/prometheus-rules.yaml and cluster/grafana-dashboard.json from raygen's definitions:
`python -m raygen.observability.export [cluster-dir]` (tests/unit/test_alerts_logic.py checks they are current)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from raygen.observability.alerts import load_rules, prometheus_rules
from raygen.observability.dashboard import grafana_dashboard

HEADER = ("# Generated from src/raygen/observability/default_alerts.yaml: python -m raygen.observability.export\n"
          "# Load it in Prometheus (rule_files) beside the scrape config of Ray's metrics endpoint.\n")


def write(cluster_dir: Path) -> None:
    (cluster_dir / "prometheus-rules.yaml").write_text(
        HEADER + yaml.safe_dump(prometheus_rules(load_rules()), sort_keys=False, width=200))
    (cluster_dir / "grafana-dashboard.json").write_text(json.dumps(grafana_dashboard(), indent=1) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "cluster"))
