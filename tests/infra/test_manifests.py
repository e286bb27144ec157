"""infra/ parses; Kubernetes objects are valid; the KubeRay objects have what KubeRay needs.

Core kinds are validated against the Kubernetes OpenAPI schemas shipped in ``kubernetes-validate``
(strict: unknown fields are errors). KubeRay's CRDs (ray.io) have no schema there, so their required
fields are checked here, and every pod template inside them is validated as a core ``PodTemplate``.
The RayJob template must run exactly what the DAG's cluster mode submits (pipelines/launch.py).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.launch import stage_command
from tests.infra import (
    HELM_VALUES,
    K8S_DIR,
    RAYJOB_TEMPLATE,
    REPO,
    find_object,
    infra_files,
    k8s_objects,
    load_yaml_documents,
    pod_templates,
    render_template,
)

K8S_VERSION = kubernetes_validate.utils.latest_version()  # schemas ship in the wheel: no network needed
RAY_API_VERSION = "ray.io/v1"
GPU = "nvidia.com/gpu"


def pyproject_pin(name: str) -> str:
    """The exact version pyproject.toml pins ``name`` to (extras ignored)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^;\s]+)", dep.strip())
        if match and match[1].lower() == name.lower():
            return match[3]
    raise KeyError(name)


# ----------------------------------------------------------------------------- checkers
def core_object_problems(obj: dict[str, Any]) -> list[str]:
    """Schema problems of a core Kubernetes object (strict: unknown fields count)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.path))
        return [f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def pod_template_problems(where: str, template: dict[str, Any]) -> list[str]:
    """A CRD's embedded pod template, validated as a core PodTemplate; plus GPU requests == limits."""
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "embedded"},
        "template": template,
    }
    problems = [f"{where}: {p}" for p in core_object_problems(wrapped)]
    for container in (template.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if (GPU in requests or GPU in limits) and str(requests.get(GPU)) != str(limits.get(GPU)):
            problems.append(
                f"{where}: container {container.get('name')}: {GPU} requests {requests.get(GPU)!r} != limits {limits.get(GPU)!r}"
            )
    return problems


def raycluster_spec_problems(where: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [f"{where}: spec.headGroupSpec is missing"]
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append(f"{where}: headGroupSpec.rayStartParams is missing")
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return problems + [f"{where}: spec.workerGroupSpecs is missing or empty"]
    for group in groups:
        name = group.get("groupName")
        if not name:
            problems.append(f"{where}: a worker group has no groupName")
        if not isinstance(group.get("rayStartParams"), dict):
            problems.append(f"{where}: worker group {name}: rayStartParams is missing")
        bounds = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(b, int) for b in bounds) or not bounds[0] <= bounds[1] <= bounds[2]:
            problems.append(
                f"{where}: worker group {name}: need integers minReplicas <= replicas <= maxReplicas, got {bounds}"
            )
    for template_where, template in pod_templates({"kind": "RayCluster", "spec": spec}):
        if not (template.get("spec") or {}).get("containers"):
            problems.append(f"{where}: {template_where}.template has no containers")
        problems += pod_template_problems(f"{where}: {template_where}", template)
    return problems


def ray_object_problems(obj: dict[str, Any]) -> list[str]:
    """Required fields of the KubeRay objects this project uses (RayCluster, RayJob)."""
    kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    if obj.get("apiVersion") != RAY_API_VERSION:
        return [f"{where}: apiVersion must be {RAY_API_VERSION}, got {obj.get('apiVersion')!r}"]
    spec = obj.get("spec") or {}
    if kind == "RayCluster":
        problems = raycluster_spec_problems(where, spec)
        if spec.get("enableInTreeAutoscaling") is not True:
            problems.append(
                f"{where}: enableInTreeAutoscaling must be true (worker groups scale between their bounds)"
            )
        gpu_groups = [
            g for g in spec.get("workerGroupSpecs") or []
            if any(GPU in ((c.get("resources") or {}).get("limits") or {}) for c in g["template"]["spec"]["containers"])
        ]  # fmt: skip
        if not gpu_groups:
            problems.append(f"{where}: no worker group has {GPU} limits")
        return problems
    if kind == "RayJob":
        problems = []
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            problems.append(f"{where}: spec.entrypoint is missing")
        if bool(spec.get("clusterSelector")) == bool(spec.get("rayClusterSpec")):
            problems.append(f"{where}: set exactly one of spec.clusterSelector and spec.rayClusterSpec")
        if spec.get("clusterSelector") and spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{where}: shutdownAfterJobFinishes must be false on a selected (shared) cluster")
        if spec.get("rayClusterSpec"):
            problems += raycluster_spec_problems(where, spec["rayClusterSpec"])
        if spec.get("submitterPodTemplate"):
            problems += pod_template_problems(f"{where}: submitterPodTemplate", spec["submitterPodTemplate"])
        return problems
    return [f"{where}: unexpected KubeRay kind {kind!r}"]


def k8s_object_problems(obj: dict[str, Any]) -> list[str]:
    """Core kinds through the schemas; ray.io custom resources through their required-field checks."""
    if str(obj.get("apiVersion", "")).split("/")[0] == "ray.io":
        return ray_object_problems(obj)
    return core_object_problems(obj)


def helm_values_problems(values: dict[str, Any]) -> list[str]:
    """The Airflow chart values: a real executor, a pinned image, secrets by reference, a DAG source."""
    problems = []
    if values.get("executor") not in (
        "LocalExecutor",
        "KubernetesExecutor",
        "CeleryExecutor",
        "CeleryKubernetesExecutor",
    ):
        problems.append(f"executor {values.get('executor')!r} is not one the chart supports")
    image = (values.get("images") or {}).get("airflow") or {}
    if not image.get("repository") or str(image.get("tag", "latest")) in ("", "latest", "None"):
        problems.append("images.airflow needs a repository and a pinned tag (not latest)")
    if str(values.get("airflowVersion")) != pyproject_pin("apache-airflow"):
        problems.append(f"airflowVersion {values.get('airflowVersion')!r} != pyproject's apache-airflow pin")
    for inline in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        if values.get(inline):
            problems.append(f"{inline} is set inline; reference a Kubernetes Secret ({inline}SecretName)")
    for ref in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        if not values.get(ref):
            problems.append(f"{ref} must name a Kubernetes Secret")
    data = values.get("data") or {}
    if not data.get("metadataSecretName") or (data.get("metadataConnection") or {}).get("pass"):
        problems.append(
            "the metadata DB connection must come from data.metadataSecretName, not inline values"
        )
    git = (values.get("dags") or {}).get("gitSync") or {}
    if not (git.get("enabled") and git.get("repo") and git.get("subPath") == "dags"):
        problems.append(
            "dags.gitSync must be enabled with a repo and subPath 'dags' (the project's DAG folder)"
        )
    return problems


# ----------------------------------------------------------------------------- the repository's files
@pytest.mark.parametrize(
    "path", infra_files(".yaml", ".yml", ".json"), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_yaml_and_json_file_under_infra_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    else:
        assert load_yaml_documents(path), f"{path} has no YAML document"


def test_every_kubernetes_object_is_valid() -> None:
    objects = k8s_objects()
    assert {obj["kind"] for _, obj in objects} >= {"Namespace", "ServiceAccount", "ConfigMap", "RayCluster"}
    problems = [f"{path.name}: {p}" for path, obj in objects for p in k8s_object_problems(obj)]
    assert problems == []


def test_every_file_in_k8s_is_classified_and_applied() -> None:
    """Each file is an object the kustomization applies, the helm values, or the per-run template."""
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    applied = set(kustomization["resources"])
    assert all((K8S_DIR / name).is_file() for name in applied)
    object_files = {path.name for path, _ in k8s_objects()}
    assert object_files == applied, "every object file is in kustomization.yaml and vice versa"
    others = {p.name for p in K8S_DIR.glob("*.yaml")} - object_files
    assert others == {"kustomization.yaml", HELM_VALUES.name, RAYJOB_TEMPLATE.name}


def test_raycluster_runs_the_project_images_at_the_pinned_ray_version() -> None:
    cluster = find_object("RayCluster", "icg-ray")
    assert cluster is not None
    assert cluster["spec"]["rayVersion"] == pyproject_pin("ray")
    images = {c["image"] for _, t in pod_templates(cluster) for c in t["spec"]["containers"]}
    assert all(":" in i and not i.endswith(":latest") for i in images), images


@pytest.mark.parametrize("stage", ["validate", "generate"])
def test_rayjob_template_runs_what_the_dag_submits(stage: str) -> None:
    ds = "2026-11-15"
    job = yaml.safe_load(render_template(RAYJOB_TEMPLATE, STAGE=stage, DS=ds))
    assert ray_object_problems(job) == []
    # pipelines/launch.py submits the stage command behind "python" (the image's interpreter).
    assert job["spec"]["entrypoint"] == shlex.join(["python", *stage_command(stage, ds=ds)])
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "icg-ray"
    assert find_object("RayCluster", job["spec"]["clusterSelector"]["ray.io/cluster"]) is not None
    assert job["metadata"]["name"] == f"icg-{stage}-{ds}"
    assert job["metadata"]["namespace"] == find_object("RayCluster", "icg-ray")["metadata"]["namespace"]


def test_airflow_helm_values_are_complete() -> None:
    assert helm_values_problems(yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))) == []


# ----------------------------------------------------------------------------- the checkers can fail
def _cluster() -> dict[str, Any]:
    return copy.deepcopy(find_object("RayCluster", "icg-ray"))


def _gpu_container(cluster: dict[str, Any]) -> dict[str, Any]:
    group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    return group["template"]["spec"]["containers"][0]


def test_checker_rejects_gpu_requests_different_from_limits() -> None:
    cluster = _cluster()
    _gpu_container(cluster)["resources"]["requests"][GPU] = "2"
    assert any("requests '2' != limits '1'" in p for p in k8s_object_problems(cluster))


def test_checker_rejects_missing_ray_fields_and_wrong_api_version() -> None:
    cluster = _cluster()
    del cluster["spec"]["headGroupSpec"]["rayStartParams"]
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = -1
    cluster["spec"]["enableInTreeAutoscaling"] = False
    problems = k8s_object_problems(cluster)
    assert any("headGroupSpec.rayStartParams" in p for p in problems)
    assert any("minReplicas <= replicas <= maxReplicas" in p for p in problems)
    assert any("enableInTreeAutoscaling" in p for p in problems)
    assert (
        "apiVersion must be ray.io/v1"
        in k8s_object_problems({**_cluster(), "apiVersion": "ray.io/v1alpha1"})[0]
    )
    no_workers = _cluster()
    no_workers["spec"]["workerGroupSpecs"] = []
    assert any("workerGroupSpecs" in p for p in k8s_object_problems(no_workers))


def test_checker_rejects_invalid_pod_templates_inside_the_crd() -> None:
    cluster = _cluster()
    _gpu_container(cluster)["resourcez"] = {}  # a typo that KubeRay would silently drop
    assert any("'resourcez' was unexpected" in p for p in k8s_object_problems(cluster))
    cluster = _cluster()
    _gpu_container(cluster)["ports"] = [{"containerPort": "http"}]
    assert any("containerPort" in p for p in k8s_object_problems(cluster))


def test_checker_rejects_invalid_core_objects() -> None:
    account = copy.deepcopy(find_object("ServiceAccount", "icg-pipeline"))
    account["automountServiceAccountTokn"] = True  # typo: strict schemas reject unknown fields
    assert k8s_object_problems(account)
    config_map = copy.deepcopy(find_object("ConfigMap", "icg-config"))
    config_map["data"] = {"cluster.yaml": 42}
    assert k8s_object_problems(config_map)
    assert (
        "Couldn't find schema"
        in k8s_object_problems({"apiVersion": "v1", "kind": "Gizmo", "metadata": {"name": "x"}})[0]
    )


def test_checker_rejects_a_broken_rayjob() -> None:
    job = yaml.safe_load(render_template(RAYJOB_TEMPLATE, STAGE="validate", DS="2026-11-15"))
    job["spec"]["shutdownAfterJobFinishes"] = True
    job["spec"]["rayClusterSpec"] = _cluster()["spec"]
    del job["spec"]["entrypoint"]
    problems = ray_object_problems(job)
    assert any("entrypoint" in p for p in problems)
    assert any("exactly one of" in p for p in problems)
    assert any("shutdownAfterJobFinishes" in p for p in problems)


def test_checker_rejects_weak_helm_values() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    values.update(executor="SequentialExecutor", fernetKey="inline", jwtSecretName=None)
    values["images"]["airflow"]["tag"] = "latest"
    values["dags"]["gitSync"]["enabled"] = False
    problems = "\n".join(helm_values_problems(values))
    for expected in ("executor", "pinned tag", "fernetKey is set inline", "jwtSecretName", "gitSync"):
        assert expected in problems


def test_only_airflow_tasks_and_the_job_submitter_reach_the_jobs_api() -> None:
    policy = find_object("NetworkPolicy", "icg-ray")
    assert policy is not None, "infra/k8s/networkpolicy.yaml"
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"ray.io/cluster": "icg-ray"}
    assert spec["policyTypes"] == ["Ingress"]
    [own, jobs_api] = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"ray.io/cluster": "icg-ray"}}}]}
    assert jobs_api["ports"] == [{"port": 8265, "protocol": "TCP"}]
    allowed = [peer["podSelector"]["matchLabels"] for peer in jobs_api["from"]]
    assert allowed == [{"tier": "airflow"}, {"app.kubernetes.io/component": "ray-job-submitter"}]
    submitter = yaml.safe_load(RAYJOB_TEMPLATE.read_text(encoding="utf-8"))["spec"]["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["app.kubernetes.io/component"] == "ray-job-submitter"
