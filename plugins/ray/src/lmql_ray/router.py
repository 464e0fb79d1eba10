"""The Ray Serve request router of the model deployment: ``policy.PrefixAffinityPolicy`` on
the ``routing_key`` (token ids) each call carries, loads counted from the calls this router sent.

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
        self.loads: Counter[ReplicaID] = Counter()  # calls sent and not completed
        self.lock = threading.Lock()
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
            loads = {replica_id: self.loads[replica_id] for replica_id in by_id}
            if self.round_robin:
                ranked = sorted(by_id, key=lambda r: r.unique_id)
                self.turn += 1
                ranked = ranked[self.turn % len(ranked):] + ranked[: self.turn % len(ranked)]
            else:
                ranked = self.policy.rank(tokens, loads)
                if ranked:
                    self.policy.routed(ranked[0], tokens)
        return [[by_id[replica_id]] for replica_id in ranked]

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        with self.lock:
            self.loads[replica_id] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        with self.lock:
            if self.loads[replica_id] > 0:
                self.loads[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget([replica_id])

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        live = {replica.replica_id for replica in replicas}
        self._forget([replica_id for replica_id in self.loads if replica_id not in live])
        super().update_replicas(replicas)

    def _forget(self, replica_ids: list[ReplicaID]) -> None:
        with self.lock:
            self.policy.forget(replica_ids)
            for replica_id in replica_ids:
                self.loads.pop(replica_id, None)

    def replica_names(self) -> list[str]:
        """The live replicas' ids (``ReplicaID.unique_id``)."""
        return sorted(replica_id.unique_id for replica_id in list(self.curr_replicas))

