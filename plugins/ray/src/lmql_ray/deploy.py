"""The Ray Serve application: the model deployment (``ModelReplica``, routed by
``PrefixAffinityRouter``, fixed or autoscaled) behind the ``Ingress``; and starting it on a local
Ray or a cluster."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmql_core.plugin import LMQLError
from lmql_core.plugin.serving import wire

MODEL_DEPLOYMENT = "lmql-model"
INGRESS_DEPLOYMENT = "lmql-ingress"
APP_NAME = "lmql"
ROUTER_CLASS = "lmql_ray.router:PrefixAffinityRouter"


@dataclass
class ClusterConfig:
    """What ``lmql serve-cluster`` deploys. ``replicas``: a fixed number, unless ``min_replicas``
    and ``max_replicas`` differ, then Ray Serve scales between them on ongoing requests
    (``target_ongoing`` per replica). ``gpus_per_replica``: with ``cuda``, the GPUs each replica
    reserves (its layers split across them); ``cpus_per_replica``: 0 fits replicas on a small
    machine (CI)."""

    model: str
    backend: str | None = None
    cuda: bool = False
    dtype: str | None = None
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    engine_options: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing: float = 16.0
    upscale_delay: float = 30.0  # Ray Serve's defaults
    downscale_delay: float = 600.0
    look_back: float = 30.0
    max_ongoing: int = 1024
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    limits: wire.Limits = field(default_factory=wire.Limits)
    router_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, not {self.replicas}")
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        if low < 0 or high < 1 or low > high:
            raise ValueError(f"replicas must satisfy 0 <= min ({low}) <= max ({high}) and max >= 1")
        gpus = float(self.gpus_per_replica)
        if gpus <= 0 or (gpus > 1 and not gpus.is_integer()):  # Ray's rule: above 1, whole units
            raise ValueError(f"--gpus-per-replica must be a fraction up to 1 or a whole number, "
                             f"not {gpus:g}")
        if min(self.upscale_delay, self.downscale_delay) < 0 or self.look_back <= 0:
            raise ValueError("the scaling delays must be at least 0 seconds and the look-back above 0")

    def scaling(self) -> dict[str, Any]:
        """The model deployment's ``num_replicas`` or ``autoscaling_config``."""
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        if low == high:
            return {"num_replicas": low}
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                       "initial_replicas": max(low, min(self.replicas, high)),
                                       "target_ongoing_requests": self.target_ongoing,
                                       "upscale_delay_s": self.upscale_delay,
                                       "downscale_delay_s": self.downscale_delay,
                                       "look_back_period_s": self.look_back}}

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus_per_replica}
        if self.cuda:
            options["num_gpus"] = self.gpus_per_replica
        return options


def build_app(config: ClusterConfig) -> Any:
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from lmql_ray.ingress import Ingress
    from lmql_ray.replica import ModelReplica

    model = serve.deployment(ModelReplica, name=MODEL_DEPLOYMENT).options(
        max_ongoing_requests=config.max_ongoing,
        ray_actor_options=config.actor_options(),
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER_CLASS, request_router_kwargs=config.router_kwargs,
            request_routing_stats_period_s=2.0),
        health_check_period_s=2.0,
        **config.scaling(),
    )
    ingress = serve.deployment(Ingress, name=INGRESS_DEPLOYMENT).options(
        max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
    replicas = model.bind(config.model, config.backend, config.cuda, config.dtype, config.loader_kwargs,
                          config.engine_options, config.limits)
    return ingress.bind(replicas, MODEL_DEPLOYMENT, config.limits)


def start(config: ClusterConfig, host: str = "127.0.0.1", port: int = 8080,
          ray_address: str | None = None) -> str:
    """Deploy on the Ray cluster at ``ray_address`` (None: a local Ray started here) and return
    the endpoint ``host:port`` once every replica has loaded."""
    from ray import serve

    connect(ray_address)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    except RuntimeError as error:  # a replica could not start (its model did not load, ...)
        why = " ".join(str(error).split())[:300]
        raise LMQLError(f"the replicas did not start ({why}); each replica's log is in Ray's session "
                        "folder, logs/serve/ (/tmp/ray/session_latest/ locally)") from None
    return f"{host}:{port}"


def connect(ray_address: str | None) -> None:
    """Join the cluster at ``ray_address``, or start a local Ray (None)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace="lmql", log_to_driver=False, include_dashboard=False)


def serve_until_stopped(config: ClusterConfig, host: str, port: int, ray_address: str | None,
                        announce: Callable[[str], None] = print) -> None:
    """``start``, then serve until Ctrl-C or SIGTERM; then remove the application (a cluster we
    joined keeps running) or stop the local Ray we started."""
    import ray
    from ray import serve

    try:
        connect(ray_address)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init, which sets its own
        endpoint = start(config, host, port, ray_address)
        announce(f"Serving on ws://{endpoint}/ (LMTP) and http://{endpoint}/v1 (OpenAI); Ctrl-C stops")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            if ray_address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()
