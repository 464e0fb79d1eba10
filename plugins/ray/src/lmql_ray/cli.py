"""``lmql serve-cluster``: replicas of a model on Ray Serve behind one LMTP + OpenAI endpoint."""

from __future__ import annotations

from typing import Any

import click

from lmql_core.plugin import LMQLError
from lmql_core.plugin.serving import Limits, model_and_loader_args
from lmql_core.plugin.serving import shown_errors as _errors

ROUTING = ("prefix", "round-robin")


@click.command("serve-cluster", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model", required=False, default="lmql-tiny")
@click.option("--replicas", default=1, show_default=True, type=int,
              help="Replicas of the model (with --cuda, each reserves --gpus-per-replica GPUs).")
@click.option("--min-replicas", type=int, help="Autoscale from this many (default: --replicas).")
@click.option("--max-replicas", type=int, help="Autoscale up to this many (default: --replicas).")
@click.option("--target-ongoing", default=16.0, show_default=True, type=float,
              help="Autoscaling: ongoing requests (streams) per replica to aim for.")
@click.option("--upscale-delay", default=30.0, show_default=True, type=float,
              help="Autoscaling: seconds the load must call for more replicas before they start.")
@click.option("--downscale-delay", default=600.0, show_default=True, type=float,
              help="Autoscaling: seconds the load must call for fewer replicas before one stops.")
@click.option("--look-back", default=30.0, show_default=True, type=float,
              help="Autoscaling: seconds over which ongoing requests are averaged.")
@click.option("--max-ongoing", default=1024, show_default=True, type=int,
              help="Streams one replica takes at once; beyond, requests wait in the router.")
@click.option("--ray-address", help="Join this Ray cluster (`ray start --head` printed it); "
              "default: start a local Ray.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface of the endpoint.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--backend", help="Backend for unprefixed model names (default: hf).")
@click.option("--cuda", is_flag=True, help="Load each replica on its GPU(s).")
@click.option("--dtype", help="Weights' data type: float16, bfloat16, float32, 8bit, 4bit.")
@click.option("--gpus-per-replica", default=1.0, show_default=True, type=float,
              help="With --cuda: GPUs each replica reserves; above 1 (whole) its layers split across "
              "them, below 1 replicas share a GPU.")
@click.option("--cpus-per-replica", default=1.0, show_default=True, type=float,
              help="CPUs each replica reserves in Ray (0 packs replicas onto a small machine).")
@click.option("--routing", type=click.Choice(ROUTING), default="prefix", show_default=True,
              help="prefix: a prompt goes to the replica caching its longest prefix unless loads are "
              "imbalanced; round-robin: in turn (a baseline).")
@click.option("--imbalance", default=4, show_default=True, type=int,
              help="Ongoing streams between the most and least loaded replica beyond which prefixes "
              "are ignored and the least loaded is chosen.")
@click.pass_context
def serve_cluster(ctx: click.Context, model: str, replicas: int, min_replicas: int | None,
                  max_replicas: int | None, target_ongoing: float, upscale_delay: float,
                  downscale_delay: float, look_back: float, max_ongoing: int,
                  ray_address: str | None, host: str, port: int, backend: str | None, cuda: bool,
                  dtype: str | None, gpus_per_replica: float, cpus_per_replica: float, routing: str,
                  imbalance: int) -> None:
    """Serve MODEL from replicas on Ray Serve, behind one endpoint speaking LMTP (ws://HOST:PORT/)
    and OpenAI's API (http://HOST:PORT/v1), until Ctrl-C.

    Without --ray-address a local Ray starts here; with it, the replicas go wherever that
    cluster has room. Further `--KEY VALUE` pairs go to the backend's loader, as with serve-model.
    """
    from lmql_ray.deploy import serve_until_stopped

    with _errors():
        config = cluster_config(ctx.args, model, backend, cuda, dtype, replicas=replicas,
                                min_replicas=min_replicas, max_replicas=max_replicas,
                                target_ongoing=target_ongoing, upscale_delay=upscale_delay,
                                downscale_delay=downscale_delay, look_back=look_back,
                                max_ongoing=max_ongoing,
                                gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                                router_kwargs={"round_robin": routing == "round-robin",
                                               "imbalance_threshold": imbalance})
        click.echo(f"Deploying {config.model}: {_describe(config)} on {ray_address or 'a local Ray'}")
        serve_until_stopped(config, host, port, ray_address, announce=click.echo)


def cluster_config(args: list[str], model: str, backend: str | None, cuda: bool, dtype: str | None,
                   **settings: Any) -> Any:
    """The deployment's configuration, the loader options checked here (not in each replica)."""
    from lmql_core.plugin import backend_for_name
    from lmql_core.plugin.serving import command_line_pairs, parse_model_id
    from lmql_ray.deploy import ClusterConfig

    model, loader_args = model_and_loader_args(model, args)
    spec = backend_for_name(parse_model_id(model, backend).backend)
    checked = spec.options.check(command_line_pairs(loader_args), from_text=True) if loader_args else {}
    loader_kwargs, engine_options = spec.options.check_and_split(checked)
    try:
        return ClusterConfig(model, backend, cuda, dtype, loader_kwargs, engine_options,
                             limits=Limits(), **settings)
    except ValueError as error:
        raise LMQLError(str(error)) from None


def _describe(config: Any) -> str:
    scaling = config.scaling()
    if "num_replicas" in scaling:
        return f"{scaling['num_replicas']} replica(s)"
    auto = scaling["autoscaling_config"]
    return f"{auto['min_replicas']} to {auto['max_replicas']} replicas (autoscaled)"
