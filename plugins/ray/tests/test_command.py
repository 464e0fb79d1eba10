"""`lmql serve-cluster` as the plugin registers it, and the deployment it builds, without a Ray
cluster: the command line, its errors, fixed and autoscaled replicas, GPUs per replica."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, run_lmql, the_error

pytest.importorskip("ray.serve")

from lmql_ray.deploy import ClusterConfig  # noqa: E402


def test_the_plugin_adds_serve_cluster_to_the_lmql_command() -> None:
    result = run_lmql("serve-cluster", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--replicas", "--min-replicas", "--max-replicas", "--ray-address", "--routing"):
        assert option in result.stdout
    assert "serve-cluster" in run_lmql("--help").stdout


def test_with_the_plugin_installed_lmql_imports_ray_only_when_serve_cluster_runs() -> None:
    script = ("import sys, lmql\nfrom lmql_core.loading import plugin_manager\n"
              "print([c.name for c in plugin_manager.registry().commands], 'ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['serve-cluster']", "False"]


@pytest.mark.parametrize(("args", "message"), [
    (["--replicas", "0"], "--replicas must be at least 1, not 0"),
    (["--min-replicas", "3", "--max-replicas", "2"], "0 <= min (3) <= max (2)"),
    (["--max_batch", "many"], "max_batch"),
    (["--min-replicas", "1", "--max-replicas", "2", "--upscale-delay", "-1"], "the scaling delays must be"),
    (["--min-replicas", "1", "--max-replicas", "2", "--look-back", "0"], "the look-back above 0"),
    (["--cuda", "--gpus-per-replica", "1.5"], "a fraction up to 1 or a whole number, not 1.5"),
    (["--gpus-per-replica", "0"], "--gpus-per-replica must be a fraction up to 1 or a whole number, not 0"),
])
def test_bad_settings_are_refused_before_ray_starts(args: list[str], message: str) -> None:
    result = run_lmql("serve-cluster", "lmql-tiny", *args)
    assert message in the_error(result)
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_a_model_the_replicas_cannot_load_is_one_error_line(tmp_path: Path) -> None:
    # Ray Serve tries a failing replica 3 times before giving up; once is enough here (a third of the time)
    retries = {"RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}
    result = run_lmql("serve-cluster", str(tmp_path / "no-model-here"), "--cpus-per-replica", "0",
                      "--port", str(free_port()), timeout=300,
                      env={"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **retries})
    assert "the replicas did not start" in the_error(result)


def test_an_unknown_routing_policy_is_a_usage_error() -> None:
    result = run_lmql("serve-cluster", "--routing", "random")
    assert result.returncode == 2
    assert "'random' is not one of 'prefix', 'round-robin'" in result.stderr


def test_fixed_replicas_and_autoscaling_on_ongoing_requests() -> None:
    assert ClusterConfig("m", replicas=2).scaling() == {"num_replicas": 2}
    auto = ClusterConfig("m", replicas=2, min_replicas=1, max_replicas=4, target_ongoing=8,
                         upscale_delay=0, downscale_delay=5, look_back=12).scaling()
    assert auto == {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                           "target_ongoing_requests": 8, "upscale_delay_s": 0,
                                           "downscale_delay_s": 5, "look_back_period_s": 12}}
    # scaled to zero when idle, one replica to start with
    idle = ClusterConfig("m", min_replicas=0, max_replicas=2).scaling()["autoscaling_config"]
    assert idle["min_replicas"] == 0 and idle["initial_replicas"] == 1


def test_each_replica_reserves_its_gpus_with_cuda_and_none_without() -> None:
    with_gpus = ClusterConfig("m", cuda=True, gpus_per_replica=2).actor_options()
    assert with_gpus == {"num_cpus": 1.0, "num_gpus": 2}
    assert ClusterConfig("m", cpus_per_replica=0).actor_options() == {"num_cpus": 0}
