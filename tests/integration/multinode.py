"""A Ray cluster of several nodes on this one machine, for tests: each node is a `ray start --block` in its
own process group, with its own labels, resources, ports and raygen cache, so one node can be killed (its
raylet and every worker on it, as when a machine dies) and started again, without touching the others or
the session's own cluster. Nodes share nothing on local disk that raygen reads: data, runs and models go
through S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import BIN, free_port

# Dead nodes are noticed in ~3 s instead of ~30 s (GCS health checks; the head reads these at start).
FAST_FAILURE = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}


@dataclass
class Node:
    name: str
    args: list[str]
    env: dict
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the node's whole process group: the raylet, its object store and every worker on it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for pid in _group_leftovers(self.proc.pid if self.proc else None):
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _group_leftovers(pgid: int | None) -> list[int]:
    if pgid is None:
        return []
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, g in (line.split() for line in out if line.strip()) if int(g) == pgid]


@dataclass
class LocalCluster:
    """A head and worker nodes on 127.0.0.1. `labels` (raygen.io/node, raygen.io/pool) tell them apart."""

    root: Path
    env: dict
    nodes: dict[str, Node] = field(default_factory=dict)
    address: str = ""
    dashboard: str = ""
    _saved_address: str | None = None

    def _ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]

    def _node_env(self, name: str) -> dict:
        """Each node its own raygen cache; RAY_ADDRESS so that its processes find this cluster, not the
        session's one beside it."""
        cache = self.root / f"cache-{name}"
        return {**self.env, **FAST_FAILURE, "RAYGEN_CACHE": str(cache), "RAY_ADDRESS": self.address}

    def start_head(self, cpus: int, labels: dict[str, str]) -> None:
        """Start the head; from now until stop() it is this process's RAY_ADDRESS (Ray's state API goes by
        RAY_ADDRESS even when given a dashboard address)."""
        port, dash = free_port(), free_port()
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        self._saved_address = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = self.address
        args = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                f"--labels={_labels(labels)}", "--disable-usage-stats", *self._ports()]
        self._start(Node("head", args, self._node_env("head"), self.root / "head.log"))

    def add_worker(self, name: str, cpus: int, labels: dict[str, str], resources: dict[str, float] | None = None
                   ) -> None:
        args = [f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                f"--labels={_labels(labels)}", f"--resources={json.dumps(resources or {})}", *self._ports()]
        self._start(Node(name, args, self._node_env(name), self.root / f"{name}.log"))

    def _start(self, node: Node, tries: int = 3) -> None:
        """Start a node; again when it gives up (`ray start` allows its raylet 30 s to register, which a
        loaded 2-core machine starting Python agents can exceed), on fresh ports each time: a port that
        free_port() saw free can be taken before the raylet binds it, and then every try on it fails the
        same way (a local run once lost node b three times over, 'Failed to get node info')."""
        self.nodes[node.name] = node
        for attempt in range(tries):
            if attempt:
                self._fresh_ports(node)
            node.start()
            try:
                self.wait_alive(node.name)
                return
            except RuntimeError:
                node.kill()
                if attempt == tries - 1:
                    raise

    def _fresh_ports(self, node: Node) -> None:
        node.args = [a for a in node.args if not a.startswith(("--node-manager-port", "--object-manager-port",
                                                               "--dashboard-agent", "--runtime-env-agent-port",
                                                               "--metrics-export-port"))] + self._ports()

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        self._fresh_ports(node)
        self._start(node)

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def node_ids(self, name: str) -> set[str]:
        """Ray node ids (alive or dead) whose raygen.io/node label is name."""
        import ray

        return {n["NodeID"] for n in ray.nodes() if n.get("Labels", {}).get("raygen.io/node") == name}

    def name_of(self, node_id: str) -> str:
        import ray

        for n in ray.nodes():
            if n["NodeID"] == node_id:
                return n.get("Labels", {}).get("raygen.io/node", "?")
        return "?"

    def wait_alive(self, name: str, timeout: float = 120) -> None:
        """Until a live node labelled name has joined (asked through `ray status`-free GCS calls)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._alive(name):
                return
            node = self.nodes[name]
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {name} exited: {node.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"node {name} did not join in {timeout} s: {self.nodes[name].log.read_text()[-3000:]}")

    def wait_dead(self, name: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while self._alive(name):
            assert time.time() < deadline, f"node {name} still alive {timeout} s after its kill"
            time.sleep(0.5)

    def _alive(self, name: str) -> bool:
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        except Exception:  # the dashboard is not up yet
            return False
        return any(n.labels.get("raygen.io/node") == name for n in nodes)

    def stop(self) -> None:
        # The cluster is thrown away: SIGKILL every node's process group at once. A SIGTERM'd `ray start
        # --block` takes 20-40 s to wind down three nodes, and nothing of this cluster is kept.
        for name in reversed(list(self.nodes)):  # workers first, then the head
            self.nodes[name].kill()
        if self._saved_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = self._saved_address


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())
