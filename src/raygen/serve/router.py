"""PrefixAwareRouter: Ray Serve request router for LLMServer replicas (policy in router_policy.py).

A replica's load is what its engine reports through `record_routing_stats` (sequences running and
waiting, refreshed every `request_routing_stats_period_s`) plus the requests this router sent it since
that report, so a burst does not all land on one replica before the next report.
"""

from __future__ import annotations

import time

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, \
    RunningReplica

from raygen.serve.router_policy import PrefixAffinity


class PrefixAwareRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, chunk: int = 16, margin: int = 4, **kwargs):
        self.policy = PrefixAffinity(chunk, margin)
        self._sent: dict[str, list[float]] = {}  # replica -> times this router sent it a request

    def _load(self, r: RunningReplica, now: float) -> int:
        stats = r.routing_stats or {}
        rid = r.replica_id.unique_id
        since = stats.get("at", 0.0)
        recent = [t for t in self._sent.get(rid, []) if t > since and t > now - 30]
        self._sent[rid] = recent
        return int(stats.get("load", 0)) + len(recent)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is None or not pending_request.args or not isinstance(pending_request.args[0], list):
            return [candidate_replicas]
        now = time.time()
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = self.policy.rank(pending_request.args[0], {rid: self._load(r, now) for rid, r in by_id.items()})
        return [[by_id[rid]] for rid in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult):
        if pending_request.args and isinstance(pending_request.args[0], list):
            self.policy.record(pending_request.args[0], replica_id.unique_id)
            self._sent.setdefault(replica_id.unique_id, []).append(time.time())

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        self.policy.forget(replica_id.unique_id)
