"""The deploy configs parse, carry what the ASR cluster needs, and say the same thing.

``deploy/ray/serve.yaml`` is validated with Serve's own schema and its ``args`` with the app's
option parser; the KubeRay ``RayService`` is rendered by ``kubectl kustomize`` where kubectl is
installed (it needs no cluster), else read as plain YAML.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.asr.serve.options import parse_options

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAML = ROOT / "deploy" / "ray" / "serve.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"


def serve_config() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


def kuberay_documents() -> list[dict]:
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(KUBERAY)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [d for d in yaml.safe_load_all(rendered) if d]
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return docs


def test_serve_yaml_runs_the_asr_app_on_gpus_with_long_downscale():
    config = serve_config()
    [app] = config["applications"]
    assert app["import_path"] == "services.asr.serve.app:build_app"
    assert app["route_prefix"] == "/"
    [deployment] = app["deployments"]
    assert deployment["name"] == "asr" and deployment["ray_actor_options"]["num_gpus"] == 1
    scaling = deployment["autoscaling_config"]
    assert scaling["target_ongoing_requests"] < app["args"]["max_streams"]
    assert scaling["downscale_delay_s"] >= 600 > scaling["upscale_delay_s"]
    assert deployment["graceful_shutdown_timeout_s"] >= 30
    # Ongoing requests are live streams plus probes: more than max_streams, so a full replica
    # answers 1013 itself rather than HAProxy queueing the connection.
    assert deployment["max_ongoing_requests"] > app["args"]["max_streams"]
    assert config["http_options"]["port"] == 8000
    # The args are the app's options: unknown names or bad values fail here, not at deploy.
    replica, placement = parse_options(app["args"])
    assert replica.engine_config().device == "cuda" and placement["ray_actor_options"]["num_gpus"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the cluster extra")
def test_serve_yaml_passes_serves_own_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config())
    assert schema.applications[0].deployments[0].health_check_period_s == 5


def test_kuberay_rayservice_has_a_gpu_group_haproxy_and_the_same_serve_config():
    [service] = [d for d in kuberay_documents() if d["kind"] == "RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas go to GPU workers only
    [gpu] = cluster["workerGroupSpecs"]
    [worker] = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["maxReplicas"] >= gpu["minReplicas"] >= 1
    for container in [*head["template"]["spec"]["containers"], worker]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env["VOICE_AGENT_ASR_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    # One config: the RayService carries deploy/ray/serve.yaml as it is.
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config()
