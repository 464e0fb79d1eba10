"""Prometheus metrics, read from the engines' own counters at scrape time."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lmql_core.lmtp.server.gc_pauses import PAUSES
from lmql_core.loading.model_host import ModelHost

TRANSPORTS = ("lmtp", "openai")


@dataclass
class Traffic:
    """What each transport (LMTP, OpenAI's HTTP API) receives: requests so far (LMTP: frames;
    OpenAI: HTTP requests) and its clients now (LMTP: connections; OpenAI: requests in flight)."""

    requests: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)


class EngineCollector(Collector):
    def __init__(self, host: ModelHost, connections: int, traffic: Traffic | None = None) -> None:
        self.host = host
        self.connections = connections
        self.traffic = traffic or Traffic()

    def collect(self) -> Iterator[Any]:
        for name, doc, family_type, read in METRICS:
            family = family_type(name, doc, labels=["model"])
            for model_name, model in self.host.models.items():
                family.add_metric([model_name], read(model.engine))
            yield family
        yield self._by_label("lmql_engine_chain_breaks", "Steps not followed by a chained step (on a "
                             "backend that chains), by reason", "reason", lambda stats: stats.chain_breaks)
        yield self._by_label("lmql_engine_phase_seconds", "The engine thread's busy time by part of its "
                             "loop (launch, deliver, collect, schedule)", "phase",
                             lambda stats: stats.phase_seconds)
        yield GaugeMetricFamily("lmql_connections", "Open LMTP connections", value=self.connections)
        requests = CounterMetricFamily("lmql_requests", "Requests received (LMTP frames, OpenAI "
                                       "HTTP requests)", labels=["transport"])
        clients = GaugeMetricFamily("lmql_clients", "Clients now (LMTP connections, OpenAI requests "
                                    "in flight)", labels=["transport"])
        for transport in TRANSPORTS:
            requests.add_metric([transport], self.traffic.requests[transport])
            clients.add_metric([transport], self.traffic.clients[transport])
        yield requests
        yield clients


    def _by_label(self, name: str, doc: str, label: str,
                  read: Callable[[Any], dict[str, float]]) -> CounterMetricFamily:
        """A counter of each model's engine by ``label``: ``read(engine.stats)``'s entries."""
        family = CounterMetricFamily(name, doc, labels=["model", label])
        for model_name, model in self.host.models.items():
            for key, value in read(model.engine.stats).items():
                family.add_metric([model_name, key], value)
        return family


class GCCollector(Collector):
    """The serving process's garbage collector: pauses, collections, frozen objects."""

    def collect(self) -> Iterator[Any]:
        pauses = CounterMetricFamily("lmql_gc_pause_seconds", "Time in Python's garbage collector",
                                     labels=["generation"])
        collections = CounterMetricFamily("lmql_gc_collections", "Python garbage collections",
                                          labels=["generation"])
        for generation, (seconds, count) in enumerate(zip(PAUSES.seconds, PAUSES.counts, strict=True)):
            pauses.add_metric([str(generation)], seconds)
            collections.add_metric([str(generation)], count)
        yield pauses
        yield collections
        yield GaugeMetricFamily("lmql_gc_frozen_objects", "Objects exempt from collection (those of "
                                "the loaded model)", value=gc.get_freeze_count())


METRICS: list[tuple[str, str, Any, Callable[[Any], float]]] = [
    ("lmql_active_sequences", "Sequences running or waiting", GaugeMetricFamily,
     lambda e: e.active_sequences()),
    ("lmql_queue_depth", "Sequences waiting to start", GaugeMetricFamily, lambda e: e.queue_depth()),
    ("lmql_step_seconds", "Duration of the last engine step", GaugeMetricFamily,
     lambda e: e.stats.last_step_seconds),
    ("lmql_tokens_generated", "Tokens generated", CounterMetricFamily, lambda e: e.stats.tokens_generated),
    ("lmql_tokens_prefilled", "Prompt tokens processed", CounterMetricFamily,
     lambda e: e.stats.tokens_prefilled),
    ("lmql_engine_steps", "Engine steps (batched forward passes)", CounterMetricFamily,
     lambda e: e.stats.steps),
    ("lmql_engine_steps_chained", "Chained steps: decode steps fed with the last step's tokens on the device",
     CounterMetricFamily, lambda e: e.stats.steps_chained),
    ("lmql_engine_tokens_forced_chained", "Tokens fed from the host in chained steps, one a row a step: "
     "those a constraint forced, and the text before a template's next hole",
     CounterMetricFamily, lambda e: e.stats.tokens_forced_chained),
    ("lmql_engine_sequences_admitted_chained", "Sequences admitted beside a chained step (their prompts fed "
     "after it)", CounterMetricFamily, lambda e: e.stats.sequences_admitted_chained),
    ("lmql_engine_sequences_taken_over", "Template holes that went on in the last hole's place and cache "
     "(only the text between them fed)", CounterMetricFamily, lambda e: e.stats.sequences_taken_over),
    ("lmql_engine_prompt_passes_chained", "Prompt passes that fed sequences admitted beside chained steps",
     CounterMetricFamily, lambda e: e.stats.prompt_passes_chained),
    ("lmql_engine_steps_ahead", "Steps launched ahead: queued while a step that samples nothing ran",
     CounterMetricFamily, lambda e: e.stats.steps_ahead),
    ("lmql_engine_busy_seconds", "Time the engine thread worked (waits for requests excluded)",
     CounterMetricFamily, lambda e: e.stats.busy_seconds),
    ("lmql_engine_arrival_wait_seconds", "Time an idle engine woken by a request waited for the requests "
     "sent with it", CounterMetricFamily, lambda e: e.stats.arrival_wait_seconds),
    ("lmql_engine_device_wait_seconds", "Part of the busy time spent waiting for a step's results",
     CounterMetricFamily, lambda e: e.stats.device_wait_seconds),
    ("lmql_engine_mask_fill_seconds", "Time spent filling grammars' masks (beside the forward passes)",
     CounterMetricFamily, lambda e: e.stats.mask_fill_seconds),
    ("lmql_engine_mask_wait_seconds", "Part of the busy time spent waiting for masks after a forward pass",
     CounterMetricFamily, lambda e: e.stats.mask_wait_seconds),
    ("lmql_engine_grammar_seconds", "Part of the busy time spent following grammars (tokens taken, "
     "fast-forward)", CounterMetricFamily, lambda e: e.stats.grammar_seconds),
    ("lmql_sequences_finished", "Sequences finished", CounterMetricFamily,
     lambda e: e.stats.sequences_finished),
    ("lmql_sequences_cancelled", "Sequences cancelled", CounterMetricFamily,
     lambda e: e.stats.sequences_cancelled),
    ("lmql_sequences_preempted", "Sequences paused to give other connections their share of the batch",
     CounterMetricFamily, lambda e: e.stats.sequences_preempted),
    ("lmql_sequences_held", "Sequences paused while a slow constraint mask was computed beside the engine",
     CounterMetricFamily, lambda e: e.stats.sequences_held),
]


def render_metrics(host: ModelHost, connections: int, traffic: Traffic | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(EngineCollector(host, connections, traffic))
    registry.register(GCCollector())
    return generate_latest(registry)
