"""The Ray Serve request router of the model deployment: ``policy.PrefixAffinityPolicy`` on
the ``routing_key`` (token ids) each call carries; loads are the ongoing requests Ray counts.

It runs in the process that holds the deployment's handle (the ingress). Ray tries the ranks it
returns in order, so each rank holds one replica: the policy's choice is taken unless that
replica's queue is full (``max_ongoing_requests``). A call with ``pin_replica`` (the ingress
asking one replica for its health or metrics) goes to that replica alone.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from lmql_ray.policy import PrefixAffinityPolicy, PrefixTree

# The routers living in this process, by deployment name: the ingress lists replicas through them.
ROUTERS: dict[str, PrefixAffinityRouter] = {}


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, imbalance_threshold: int = 4, min_match_tokens: int = 2,
                         max_prompts: int = 4096, round_robin: bool = False, **kwargs: Any) -> None:
        """``request_router_kwargs``; ``round_robin``: ignore prefixes (the benchmark's baseline)."""
        self.policy = PrefixAffinityPolicy(imbalance_threshold, min_match_tokens, PrefixTree(max_prompts))
        self.round_robin = round_robin
        self.turn = 0
        self.lock = threading.Lock()
        # requests routed to a replica and not sent yet: Ray routes a burst before it sends any,
        # and counts a request only once sent; without these the whole burst sees the same loads
        self.assigned: Counter[ReplicaID] = Counter()
        # through the module: Ray may have unpickled this class by value, with a copy of its globals
        import lmql_ray.router

        lmql_ray.router.ROUTERS[self._deployment_id.name] = self

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        kwargs = pending_request.kwargs if pending_request is not None else {}
        if pending_request is not None:  # every replica is ranked: if none takes it, wait before asking again
            pending_request.routing_context.should_backoff = True
        pinned = kwargs.get("pin_replica")
        if pinned is not None:
            return [[r for r in candidate_replicas if r.replica_id.unique_id == pinned]]
        tokens = kwargs.get("routing_key") or []
        with self.lock:
            loads = {replica_id: self.load(replica) + self.assigned[replica_id]
                     for replica_id, replica in by_id.items()}
            if self.round_robin:
                ranked = sorted(by_id, key=lambda r: r.unique_id)
                self.turn += 1
                ranked = ranked[self.turn % len(ranked):] + ranked[: self.turn % len(ranked)]
            else:
                ranked = self.policy.rank(tokens, loads)
                if ranked:
                    self.policy.routed(ranked[0], tokens)
                    self.assigned[ranked[0]] += 1
        return [[by_id[replica_id]] for replica_id in ranked]

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)  # Ray's count of the replica's ongoing requests takes it over
        with self.lock:
            if self.assigned[replica_id] > 0:
                self.assigned[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget([replica_id])

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        live = {replica.replica_id for replica in replicas}
        self._forget([replica_id for replica_id in self.curr_replicas if replica_id not in live])
        super().update_replicas(replicas)

    def load(self, replica: RunningReplica) -> int:
        """Its ongoing requests: Ray's count (kept by this router as it sends and as requests
        finish, corrected by the replica's answers), else what the replica last reported."""
        counted = self.replica_queue_len_cache.get(replica.replica_id)
        if counted is not None:
            return int(counted)
        return int((replica.routing_stats or {}).get("ongoing", 0))

    def _forget(self, replica_ids: list[ReplicaID]) -> None:
        with self.lock:
            self.policy.forget(replica_ids)
            for replica_id in replica_ids:
                self.assigned.pop(replica_id, None)

    def replica_names(self) -> list[str]:
        """The live replicas' ids (``ReplicaID.unique_id``)."""
        return sorted(replica_id.unique_id for replica_id in list(self.curr_replicas))

