"""From (spec, Serve config) to a KubeRay `RayService` and a Prometheus Operator `PodMonitor`.

The RayService runs the Serve config that `jizhi serve` deploys locally (`serving.deploy.
serve_config`, built with the model path as the pods see it) as its `serveConfigV2`; the one field
that differs is `http_options.host`, 0.0.0.0 in a pod instead of loopback. The Ray cluster has:

- a head pod that schedules no replicas (`num-cpus: "0"`): GCS, dashboard, Serve controller and
  the HTTP proxy (`proxy_location: HeadOnly`), with Serve on port 8000;
- a `cpu` worker group for the replicas that need no GPU: at least two identical pods when there
  are two replicas or more (losing one pod never takes a whole deployment down), as few as keep
  each pod within `max_pod_cpus`, each with the fewest whole CPUs into which the replicas pack
  (first-fit decreasing), so the group has at most one CPU per pod more than the replicas ask;
- a `gpu` worker group when a deployment asks for GPUs: `max_pod_gpus` GPUs per pod (one by
  default, so any GPU node fits a pod) and the CPUs of the replicas packed onto it.

Container requests equal limits (Guaranteed pods); Ray's logical CPUs and GPUs per pod are the
same numbers. Every Ray pod exports metrics on port 8080 (container port `metrics`), carries
Prometheus scrape annotations, and is selected by the PodMonitor. The model is a PVC mounted
read-only at the model path in every pod (or is in the image); jizhi itself must be in the image.

>>> from serving.deploy import serve_config
>>> from simulator import load_pipeline
>>> spec = load_pipeline("examples/ctr.yaml")
>>> docs = rayservice_manifest(spec, serve_config(spec, "/models/ctr"), image="jizhi:0.1.0")
>>> [d["kind"] for d in docs]
['RayService', 'PodMonitor']
"""

from __future__ import annotations

import copy
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib.metadata import version
from pathlib import PurePosixPath
from typing import Any

import yaml

from serving.cluster import METRICS_PORT
from simulator import PipelineSpec
from simulator.errors import InputError

__all__ = [
    "DEFAULT_MODEL_PATH",
    "DEFAULT_MODEL_PVC",
    "WorkerGroup",
    "default_image",
    "dump_manifest",
    "kubernetes_serve_config",
    "plan_workers",
    "rayservice_manifest",
]

DEFAULT_MODEL_PATH = "/models/ctr"
DEFAULT_MODEL_PVC = "jizhi-model"
HEAD_CPUS = 2  # GCS, dashboard, Serve controller and the HTTP proxy; no replicas
HEAD_MEMORY_GIB = 8
MEMORY_PER_CPU_GIB = 2.0
MIN_POD_MEMORY_GIB = 4  # raylet, object store and the worker processes of a small pod
MIN_GPU_POD_MEMORY_GIB = 8  # plus the CUDA context and pinned buffers
SERVE_PORT = 8000
_LABEL_NAME = "app.kubernetes.io/name"
_LABEL_INSTANCE = "app.kubernetes.io/instance"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class WorkerGroup:
    """One worker group: `pods` identical pods of `cpus` CPUs, `gpus` GPUs and `memory_gib`."""

    name: str
    pods: int
    cpus: int
    gpus: int
    memory_gib: int


def default_image(gpu: bool = False) -> str:
    """`rayproject/ray:<installed Ray>-py<this Python>` (`-gpu` for GPU configs); jizhi must be
    added to it (deploy/kuberay/Dockerfile)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"rayproject/ray:{version('ray')}-{python}{'-gpu' if gpu else ''}"


def kubernetes_serve_config(serve_config: dict[str, Any]) -> dict[str, Any]:
    """The local Serve config with HTTP on all of the pod's interfaces (the proxy is reached
    through the pod IP and KubeRay's Serve service, not loopback)."""
    return {**serve_config, "http_options": {**serve_config["http_options"], "host": "0.0.0.0"}}


# --- sizing ------------------------------------------------------------------------------------


def _exact(value: float) -> Fraction:
    return Fraction(value).limit_denominator(1000)


def _packs(items: Sequence[tuple[Fraction, Fraction]], pods: int, cpus: int, gpus: int) -> bool:
    """Whether first-fit decreasing puts every (cpu, gpu) item into `pods` bins of this size."""
    free = [[Fraction(cpus), Fraction(gpus)] for _ in range(pods)]
    for cpu, gpu in sorted(items, key=lambda item: (item[1], item[0]), reverse=True):
        for room in free:
            if room[0] >= cpu and room[1] >= gpu:
                room[0] -= cpu
                room[1] -= gpu
                break
        else:
            return False
    return True


def _group(
    name: str, items: list[tuple[Fraction, Fraction]], max_pod_cpus: int, pod_gpus: int
) -> WorkerGroup:
    total_cpu = sum((cpu for cpu, _ in items), Fraction(0))
    total_gpu = sum((gpu for _, gpu in items), Fraction(0))
    largest_cpu = max(cpu for cpu, _ in items)
    pods = min(
        len(items),
        max(
            math.ceil(total_cpu / max_pod_cpus),
            math.ceil(total_gpu / pod_gpus) if pod_gpus else 1,
            2 if not pod_gpus else 1,
        ),
    )
    limit = max(max_pod_cpus, math.ceil(largest_cpu))
    while True:
        cpus = max(1, math.ceil(largest_cpu), math.ceil(total_cpu / pods))
        while cpus <= limit and not _packs(items, pods, cpus, pod_gpus):
            cpus += 1
        if cpus <= limit:
            break
        pods += 1  # terminates: one replica per pod always packs
    floor = MIN_GPU_POD_MEMORY_GIB if pod_gpus else MIN_POD_MEMORY_GIB
    memory = max(floor, math.ceil(cpus * MEMORY_PER_CPU_GIB))
    return WorkerGroup(name=name, pods=pods, cpus=cpus, gpus=pod_gpus, memory_gib=memory)


def plan_workers(
    serve_config: dict[str, Any], *, max_pod_cpus: int = 8, max_pod_gpus: int = 1
) -> tuple[WorkerGroup, ...]:
    """The worker groups that hold every replica of the config's deployments (see module doc)."""
    if max_pod_cpus < 1 or max_pod_gpus < 1:
        raise InputError("max_pod_cpus and max_pod_gpus must be >= 1")
    cpu_items: list[tuple[Fraction, Fraction]] = []
    gpu_items: list[tuple[Fraction, Fraction]] = []
    for app in serve_config["applications"]:
        for deployment in app["deployments"]:
            actor = deployment.get("ray_actor_options", {})
            item = (_exact(actor.get("num_cpus", 1.0)), _exact(actor.get("num_gpus", 0.0)))
            (gpu_items if item[1] > 0 else cpu_items).extend([item] * deployment["num_replicas"])
    groups = []
    if cpu_items:
        groups.append(_group("cpu", cpu_items, max_pod_cpus, 0))
    if gpu_items:
        pod_gpus = max(max_pod_gpus, math.ceil(max(gpu for _, gpu in gpu_items)))
        groups.append(_group("gpu", gpu_items, max_pod_cpus, pod_gpus))
    return tuple(groups)


# --- manifest ----------------------------------------------------------------------------------


def _resources(cpus: int, memory_gib: int, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": str(cpus), "memory": f"{memory_gib}Gi"}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod(
    container: dict[str, Any], labels: dict[str, str], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "metadata": {"labels": dict(labels), "annotations": annotations},
        "spec": {"containers": [container], "volumes": copy.deepcopy(volumes)},
    }


def _container(
    name: str, image: str, ports: list[tuple[str, int]], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports],
        "volumeMounts": copy.deepcopy(mounts),
    }


def _check_names(name: str, namespace: str, model_volume: str | None) -> None:
    if len(name) > 40 or not _DNS_1035.match(name):
        raise InputError(
            f"name {name!r}: a RayService name is lower-case letters, digits and '-', starts "
            "with a letter and has at most 40 characters (KubeRay adds suffixes)"
        )
    for what, value in (("namespace", namespace), ("model PVC", model_volume)):
        if value is not None and (len(value) > 63 or not _DNS_1123.match(value)):
            raise InputError(
                f"{what} {value!r}: lower-case letters, digits and '-', at most 63 characters"
            )


def rayservice_manifest(
    spec: PipelineSpec,
    serve_config: dict[str, Any],
    *,
    name: str = "jizhi",
    namespace: str = "default",
    image: str | None = None,
    model_dir_in_pod: str = DEFAULT_MODEL_PATH,
    model_volume: str | None = DEFAULT_MODEL_PVC,
    max_pod_cpus: int = 8,
    max_pod_gpus: int = 1,
) -> list[dict[str, Any]]:
    """The RayService and the PodMonitor (in that order) that run `serve_config` on KubeRay.

    `serve_config` is `serve_config(spec, model_dir_in_pod, ...)`; `model_volume` is the name of
    a ReadOnlyMany (or ReadWriteMany) PVC holding the model, mounted read-only at
    `model_dir_in_pod` in every Ray pod, or None when the model is in the image there.
    """
    _check_names(name, namespace, model_volume)
    mount = PurePosixPath(model_dir_in_pod)
    if not mount.is_absolute():
        raise InputError(f"model path in the pods must be absolute (got {model_dir_in_pod!r})")
    for app in serve_config["applications"]:
        model_dir = PurePosixPath(app["args"]["model_dir"])
        if model_dir != mount and mount not in model_dir.parents:
            raise InputError(
                f"the Serve config reads the model from {model_dir}, which is not under "
                f"{mount}, where the pods have it: build it with model_dir={model_dir_in_pod!r}"
            )
    groups = plan_workers(serve_config, max_pod_cpus=max_pod_cpus, max_pod_gpus=max_pod_gpus)
    gpu = any(group.gpus for group in groups)
    image = image or default_image(gpu)
    labels = {_LABEL_NAME: "jizhi", _LABEL_INSTANCE: name}
    volumes: list[dict[str, Any]] = [{"name": "ray-logs", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "ray-logs", "mountPath": "/tmp/ray"}]
    if model_volume is not None:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": model_volume, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": model_dir_in_pod, "readOnly": True})
    metrics = ("metrics", METRICS_PORT)

    head = _container(
        "ray-head",
        image,
        [
            ("gcs-server", 6379),
            ("dashboard", 8265),
            ("client", 10001),
            ("serve", SERVE_PORT),
            metrics,
        ],
        mounts,
    )
    head["resources"] = _resources(HEAD_CPUS, HEAD_MEMORY_GIB)
    workers = []
    for group in groups:
        container = _container("ray-worker", image, [metrics], mounts)
        container["resources"] = _resources(group.cpus, group.memory_gib, group.gpus)
        template = _pod(container, labels, volumes)
        params = {"num-cpus": str(group.cpus), "metrics-export-port": str(METRICS_PORT)}
        if group.gpus:
            params["num-gpus"] = str(group.gpus)
            template["spec"]["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        workers.append(
            {
                "groupName": group.name,
                "replicas": group.pods,
                "minReplicas": group.pods,
                "maxReplicas": group.pods,
                "rayStartParams": params,
                "template": template,
            }
        )
    k8s_config = kubernetes_serve_config(serve_config)
    rayservice = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {"jizhi/pipeline": spec.name},
        },
        "spec": {
            "serveConfigV2": yaml.safe_dump(k8s_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": version("ray"),
                "enableInTreeAutoscaling": False,
                "headGroupSpec": {
                    "rayStartParams": {
                        "num-cpus": "0",
                        "dashboard-host": "0.0.0.0",
                        "metrics-export-port": str(METRICS_PORT),
                    },
                    "template": _pod(head, labels, volumes),
                },
                "workerGroupSpecs": workers,
            },
        },
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{name}-ray", "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "namespaceSelector": {"matchNames": [namespace]},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }
    return [rayservice, monitor]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded Serve config) as literal blocks, so diffs stay readable;
    no anchors and aliases, which `kubectl` accepts but people misread."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _represent_str)


def dump_manifest(documents: Sequence[dict[str, Any]]) -> str:
    """Multi-document YAML for `kubectl apply -f`."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)
