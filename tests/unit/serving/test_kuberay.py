"""KubeRay manifests: every RayService validates against KubeRay's own CRD schema, runs exactly
the Serve config `jizhi serve` deploys (HTTP host aside), and has pods sized for its replicas.

KubeRay's schema is OpenAPI v3 with Kubernetes extensions, validated here as JSON Schema Draft 7
after a preprocessing step that keeps the API server's meaning where JSON Schema has a keyword
for it and says what is left out:

- `x-kubernetes-int-or-string: true`: the node accepts an integer or a string. controller-gen
  already writes `anyOf: [integer, string]` next to it; a node without one gets it added.
- `nullable: true`: `null` is added to the node's `type`.
- Objects with `properties` and neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields` get `additionalProperties: false`: `kubectl apply`
  validates fields strictly, so an unknown (misspelt) field is an error, not a silent prune.
- `x-kubernetes-list-type: set` becomes `uniqueItems: true`; `x-kubernetes-list-map-keys` is a
  custom keyword here that rejects two items with the same keys (a port listed twice).
- `format: int32` / `int64` are checked as integer ranges.
- Not checked: `x-kubernetes-validations` (CEL rules; the fields they guard, `managedBy`,
  `gcsFaultToleranceOptions`, are not written by jizhi) and `x-kubernetes-map-type` (how
  server-side apply merges, not what is valid).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from jizhi.cli import main
from serving.deploy import serve_config
from serving.kuberay import (
    WorkerGroup,
    default_image,
    dump_manifest,
    kubernetes_serve_config,
    plan_workers,
    rayservice_manifest,
)
from serving.models import ModelArtifact
from simulator import load_pipeline
from simulator.errors import InputError
from tests.conftest import EXAMPLES, ROOT

CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml.gz"
CRD_SHA256 = "1d881a4348913311f3ae54baace6213b47b40948c314923db7115ac3454f7ee3"
DEPLOYED = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
# The command in deploy/kuberay/README.md.
DEPLOY_COMMAND = [
    *("export", str(EXAMPLES / "ctr.yaml")),
    *("--format", "rayservice", "--image", "jizhi:0.1.0"),
]
SPEC = EXAMPLES / "ctr.yaml"
MODEL = "/models/ctr"
HEAD_CONTAINER = ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0]
CONFIGS = {
    "cpu": [],
    "gpu": ["ranker.device=gpu"],
    "lookup-in-ranker": ["features.in_ranker=true"],
}


# --- the CRD as a JSON Schema -----------------------------------------------------------------


def _crd() -> dict[str, Any]:
    with gzip.open(CRD, "rt", encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    assert len(documents) == 1
    crd: dict[str, Any] = documents[0]
    return crd


def _v1_schema() -> dict[str, Any]:
    (version,) = [v for v in _crd()["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _as_json_schema(node: Any) -> Any:
    """The OpenAPI node with the Kubernetes extensions turned into JSON Schema (module doc)."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_json_schema(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


def _map_keys(validator: Any, keys: list[str], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        key = tuple(repr(item.get(k)) for k in keys) if isinstance(item, dict) else None
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate list-map key {keys} = {key}")
        seen.add(key)


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


_Validator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-map-keys": _map_keys}
)


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = _as_json_schema(_v1_schema())
    _Validator.check_schema(schema)
    return _Validator(schema, format_checker=_FORMATS)


def _errors(validator: Any, document: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# --- helpers -----------------------------------------------------------------------------------


def _documents(overrides: list[str], **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = load_pipeline(SPEC, None, overrides)
    config = serve_config(spec, MODEL)
    return config, rayservice_manifest(spec, config, **options)


def _groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _pods(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]


def _head_container(rayservice: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pods(rayservice)[0]["spec"]["containers"][0]
    return container


def _demand(config: dict[str, Any], gpu: bool) -> tuple[Fraction, Fraction, int]:
    """(CPUs, GPUs, replicas) the config's CPU-only (or GPU) deployments ask for in all."""
    cpus, gpus, replicas = Fraction(0), Fraction(0), 0
    for d in config["applications"][0]["deployments"]:
        actor = d["ray_actor_options"]
        if bool(actor.get("num_gpus")) == gpu:
            cpus += Fraction(actor["num_cpus"]).limit_denominator(1000) * d["num_replicas"]
            gpus += Fraction(actor.get("num_gpus", 0)).limit_denominator(1000) * d["num_replicas"]
            replicas += d["num_replicas"]
    return cpus, gpus, replicas


# --- the vendored CRD --------------------------------------------------------------------------


def test_the_crd_is_kuberays_complete_file() -> None:
    with gzip.open(CRD, "rb") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == CRD_SHA256  # tests/data/kuberay/README.md
    crd = _crd()
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "rayservices.ray.io"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1", "v1alpha1"]
    spec = _v1_schema()["properties"]["spec"]["properties"]
    cluster = spec["rayClusterConfig"]["properties"]
    assert spec["serveConfigV2"] == {"type": "string"}
    pod = cluster["headGroupSpec"]["properties"]["template"]["properties"]["spec"]
    assert "containers" in pod["properties"]
    workers = cluster["workerGroupSpecs"]["items"]
    assert workers["required"] == ["groupName", "maxReplicas", "minReplicas", "template"]


# --- schema validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_generated_rayservice_validates_against_the_crd(validator: Any, name: str) -> None:
    _, (rayservice, monitor) = _documents(CONFIGS[name])
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert _errors(validator, rayservice) == []


def test_the_committed_manifest_and_one_with_the_model_in_the_image_validate(
    validator: Any,
) -> None:
    rayservice = next(yaml.safe_load_all(DEPLOYED.read_text()))
    assert _errors(validator, rayservice) == []
    _, (in_image, _) = _documents([], model_volume=None)
    assert _errors(validator, in_image) == []
    volumes = _pods(in_image)[0]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["ray-logs"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], "2", "is not of type"),
        (["spec", "rayClusterConfig", "workerGroupSpecs", 0, "maxReplicas"], 2**40, "int32"),
        (["spec", "rayClusterConfig", "headGroupSpec", "rayStartParams", "num-cpus"], 0, "type"),
        ([*HEAD_CONTAINER, "resources", "limits", "cpu"], "two", "does not match"),
        (["spec", "rayClusterConfig", "workerGroupSpec"], [], "Additional properties"),
        (["spec", "serveConfigV2"], {"applications": []}, "is not of type 'string'"),
    ],
)
def test_validation_catches_a_broken_manifest(
    validator: Any, path: list[Any], value: Any, message: str
) -> None:
    _, (rayservice, _) = _documents([])
    broken = copy.deepcopy(rayservice)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _errors(validator, broken)
    assert len(errors) == 1 and message in errors[0], errors


def test_validation_catches_a_port_listed_twice(validator: Any) -> None:
    _, (rayservice, _) = _documents([])
    broken = copy.deepcopy(rayservice)
    ports = _head_container(broken)["ports"]
    ports.append(dict(ports[0], name="again"))
    errors = _errors(validator, broken)
    assert len(errors) == 1 and "duplicate list-map key" in errors[0]


# --- the embedded Serve config -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serve_config_v2_is_the_local_config_but_for_the_http_host(name: str) -> None:
    spec = load_pipeline(SPEC, None, CONFIGS[name])
    local = serve_config(spec, MODEL)
    rayservice, _ = rayservice_manifest(spec, local)
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded["http_options"]["host"] == "0.0.0.0"
    assert local["http_options"]["host"] == "127.0.0.1"  # untouched
    embedded["http_options"]["host"] = local["http_options"]["host"]
    assert embedded == serve_config(spec, MODEL)
    assert kubernetes_serve_config(local) == yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def test_the_model_path_must_be_where_the_pods_mount_the_model() -> None:
    spec = load_pipeline(SPEC)
    config = serve_config(spec, "/data/runs/model")
    with pytest.raises(InputError, match="not under /models/ctr"):
        rayservice_manifest(spec, config)
    rayservice_manifest(spec, serve_config(spec, "/models/ctr/v2"))  # a subdirectory is fine


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Jizhi"}, "RayService name"),
        ({"name": "a" * 41}, "at most 40"),
        ({"namespace": "prod_1"}, "namespace"),
        ({"model_volume": "Models"}, "model PVC"),
        ({"model_dir_in_pod": "models/ctr"}, "absolute"),
    ],
)
def test_bad_names_are_one_line_input_errors(options: dict[str, Any], message: str) -> None:
    spec = load_pipeline(SPEC)
    with pytest.raises(InputError, match=message) as info:
        rayservice_manifest(spec, serve_config(spec, MODEL), **options)
    assert "\n" not in str(info.value)


# --- the Ray cluster ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_worker_pods_hold_the_replicas_and_requests_equal_ray_resources(name: str) -> None:
    config, (rayservice, _) = _documents(CONFIGS[name])
    groups = _groups(rayservice)
    for gpu, group_name in ((False, "cpu"), (True, "gpu")):
        cpus, gpus, replicas = _demand(config, gpu)
        if replicas == 0:
            assert group_name not in groups
            continue
        group = groups[group_name]
        pods = group["replicas"]
        assert group["minReplicas"] == group["maxReplicas"] == pods
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # Guaranteed pods
        pod_cpus = int(resources["limits"]["cpu"])
        pod_gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
        assert group["rayStartParams"]["num-cpus"] == str(pod_cpus)
        assert group["rayStartParams"].get("num-gpus", "0") == str(pod_gpus)
        # Every replica fits, with less than one CPU per pod to spare (whole CPUs per pod).
        assert cpus <= pods * pod_cpus < cpus + pods
        assert gpus == pods * pod_gpus  # one GPU per replica and per pod: exact
        assert int(resources["limits"]["memory"].removesuffix("Gi")) >= 2 * pod_cpus


def test_the_gpu_group_exists_only_when_a_deployment_asks_for_gpus() -> None:
    _, (cpu, _) = _documents([])
    _, (gpu, _) = _documents(["ranker.device=gpu"])
    assert set(_groups(cpu)) == {"cpu"}
    assert set(_groups(gpu)) == {"cpu", "gpu"}
    gpu_group = _groups(gpu)["gpu"]
    assert gpu_group["replicas"] == 4  # examples/ctr.yaml: 4 ranker replicas, 1 GPU each
    assert gpu_group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in str(_groups(gpu)["cpu"])
    assert default_image(gpu=True).endswith("-gpu")
    assert _head_container(gpu)["image"] == default_image(gpu=True)


def test_the_head_schedules_no_replicas_and_serves_on_all_interfaces() -> None:
    _, (rayservice, _) = _documents([])
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"] == {
        "num-cpus": "0",
        "dashboard-host": "0.0.0.0",
        "metrics-export-port": "8080",
    }
    ports = {
        p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports["serve"] == 8000 and ports["dashboard"] == 8265 and ports["metrics"] == 8080


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        # examples/ctr.yaml on CPUs: 13 CPUs of replicas in two pods of 7
        ([(0.5, 0, 2), (1.0, 0, 4), (2.0, 0, 4)], [WorkerGroup("cpu", 2, 7, 0, 14)]),
        ([(1.0, 0, 1)], [WorkerGroup("cpu", 1, 1, 0, 4)]),
        ([(3.0, 0, 3)], [WorkerGroup("cpu", 2, 6, 0, 12)]),  # 9 CPUs: 3+3 does not fit in 5
        ([(12.0, 0, 1)], [WorkerGroup("cpu", 1, 12, 0, 24)]),  # one replica larger than a pod
        ([(2.0, 0, 8)], [WorkerGroup("cpu", 2, 8, 0, 16)]),
        ([(1.0, 0.5, 4)], [WorkerGroup("gpu", 2, 2, 1, 8)]),  # two replicas share a GPU
        ([(1.0, 2.0, 2)], [WorkerGroup("gpu", 2, 1, 2, 8)]),
    ],
)
def test_plan_workers_packs_replicas_into_whole_cpus(
    replicas: list[tuple[float, float, int]], expected: list[WorkerGroup]
) -> None:
    deployments = []
    for i, (cpu, gpu, n) in enumerate(replicas):
        actor: dict[str, float] = {"num_cpus": cpu}
        if gpu:
            actor["num_gpus"] = gpu
        deployments.append({"name": f"D{i}", "num_replicas": n, "ray_actor_options": actor})
    assert list(plan_workers({"applications": [{"deployments": deployments}]})) == expected


# --- monitoring --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_ray_pod_is_scraped_on_port_8080(name: str) -> None:
    _, (rayservice, monitor) = _documents(CONFIGS[name])
    selector = monitor["spec"]["selector"]["matchLabels"]
    for pod in _pods(rayservice):
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8080"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert selector.items() <= pod["metadata"]["labels"].items()
        ports = pod["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 8080} in ports
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"


def test_the_model_pvc_is_mounted_read_only_in_every_pod() -> None:
    _, (rayservice, _) = _documents([], model_volume="ctr-model", model_dir_in_pod=MODEL)
    for pod in _pods(rayservice):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["model"]["persistentVolumeClaim"] == {
            "claimName": "ctr-model",
            "readOnly": True,
        }
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["model"] == {"name": "model", "mountPath": MODEL, "readOnly": True}


# --- the CLI and the committed manifest --------------------------------------------------------


def test_cli_export_rayservice_writes_both_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], validator: Any
) -> None:
    out = tmp_path / "rayservice.yaml"
    code = main(["export", str(SPEC), "--format", "rayservice", "--set", "ranker.device=gpu",
                 "--name", "ctr", "--namespace", "serving", "--model-pvc", "ctr-model",
                 "--model-path", "/mnt/ctr", "--out", str(out)])  # fmt: skip
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    rayservice, monitor = yaml.safe_load_all(out.read_text())
    assert _errors(validator, rayservice) == []
    assert rayservice["metadata"] == {
        "name": "ctr",
        "namespace": "serving",
        "labels": {"app.kubernetes.io/name": "jizhi", "app.kubernetes.io/instance": "ctr"},
        "annotations": {"jizhi/pipeline": "ctr-ranking"},
    }
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["model_dir"] == "/mnt/ctr"
    assert monitor["metadata"]["namespace"] == "serving"
    assert out.read_text().count("\n---\n") == 1
    assert "serveConfigV2: |" in out.read_text()  # a literal block, readable in diffs


def test_cli_default_format_is_still_the_serve_config(
    tmp_path: Path, tiny_artifact: ModelArtifact
) -> None:
    out = tmp_path / "serve.yaml"
    model = tiny_artifact.path
    assert main(["export", str(SPEC), "--model", str(model), "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["http_options"]["host"] == "127.0.0.1"


def test_a_batch_the_replica_cannot_fill_is_deployed_with_ray_s_warning(
    tmp_path: Path, tiny_artifact: ModelArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray deploys max_ongoing_requests < max_batch_size and only warns; so does jizhi (the
    simulator models what follows: the batches wait out their timeout)."""
    out = tmp_path / "serve.yaml"
    model = tiny_artifact.path
    argv = ["export", str(SPEC), "--model", str(model), "--out", str(out),
            "--set", "ranker.max_batch_size=8", "--set", "ranker.max_ongoing_requests=2"]  # fmt: skip
    assert main(argv) == 0
    deployments = yaml.safe_load(out.read_text())["applications"][0]["deployments"]
    ranker = next(d for d in deployments if d["name"] == "Ranker")
    assert (ranker["max_ongoing_requests"], ranker["user_config"]["max_batch_size"]) == (2, 8)
    assert "warning: stages.ranker: max_batch_size × max_concurrent_batches = 8" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "helm"], "--format must be one of serve, rayservice (got 'helm')"),
        (["--name", "ctr"], "--name: only with --format rayservice"),
        (["--format", "rayservice", "--name", "CTR"], "RayService name"),
    ],
)
def test_cli_bad_export_options_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(SPEC), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_committed_rayservice_is_what_export_writes_now(tmp_path: Path) -> None:
    out = tmp_path / "rayservice.yaml"
    assert main([*DEPLOY_COMMAND, "--out", str(out)]) == 0
    assert out.read_text() == DEPLOYED.read_text(), (
        "deploy/kuberay/rayservice.yaml is stale: regenerate it with the command in "
        "deploy/kuberay/README.md"
    )


def test_dump_manifest_round_trips() -> None:
    _, documents = _documents([])
    assert list(yaml.safe_load_all(dump_manifest(documents))) == documents
