"""The environment contract between infra/ and the code: no dangling names, in either direction.

- Every ``ICG*``, ``AWS_*`` and ``AIRFLOW__*`` variable that the compose stack, the Dockerfiles, the
  Kubernetes objects or the Helm values set is one something reads: ``ICG__<SECTION>__<FIELD>`` maps
  to a field of ``icg_core.config.ICGConfig`` (read from the model, so new sections count at once),
  other ``ICG_*`` names appear in the project's code, ``AWS_*`` names in the project's code or in
  botocore's, ``AIRFLOW__<SECTION>__<OPTION>`` in Airflow's configuration reference.
- Every process that runs stages gets what the cluster config needs: ``ICG_CONFIG`` naming a file
  that is really mounted, a config that loads with an ``s3://`` root, credentials (compose: the object
  store's keys; Kubernetes: an IRSA service account and no static keys), and every field
  ``configs/cluster.example.yaml`` sets. Airflow gets ``ICG_RAY_JOBS_ADDRESS`` naming the Ray head's
  Jobs API. Every ``${VAR}`` of the compose file is in ``.env.example`` and vice versa.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import runpy
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydantic
import yaml

from icg_core.config import ENV_PREFIX, ICGConfig, load_config
from tests.infra import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DOCKER_DIR,
    ENV_EXAMPLE,
    HELM_VALUES,
    PROJECT_CODE_DIRS,
    RAYJOB_TEMPLATE,
    REPO,
    command_text,
    compose_environment,
    compose_mounts,
    dockerfile_instructions,
    find_object,
    interpolation_names,
    k8s_objects,
    load_compose,
    pod_templates,
    read_dotenv,
    render_template,
)

CLUSTER_EXAMPLE = REPO / "configs" / "cluster.example.yaml"
STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
WORKLOAD_IDENTITY_ANNOTATIONS = (
    "eks.amazonaws.com/role-arn",
    "iam.gke.io/gcp-service-account",
    "azure.workload.identity/client-id",
)


@dataclass(frozen=True)
class EnvSetting:
    where: str
    name: str
    value: str


# ----------------------------------------------------------------------------- who reads what
def _python_sources(roots: Iterable[Path]) -> str:
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for root in roots for p in sorted(root.rglob("*.py"))
    )


@lru_cache(maxsize=1)
def project_sources() -> str:
    return _python_sources(REPO / d for d in PROJECT_CODE_DIRS)


@lru_cache(maxsize=1)
def botocore_sources() -> str:
    """The AWS SDK the project's S3 access goes through (boto3 -> botocore) reads these names."""
    return _python_sources([Path(importlib.util.find_spec("botocore").origin).parent])


@lru_cache(maxsize=1)
def airflow_options() -> frozenset[tuple[str, str]]:
    """(section, option) of Airflow's config reference plus the installed providers' sections."""
    package = Path(importlib.util.find_spec("airflow").origin).parent
    sections = yaml.safe_load((package / "config_templates" / "config.yml").read_text(encoding="utf-8"))
    for info in sorted((package / "providers").rglob("get_provider_info.py")):
        # A plain function returning a dict: run the file alone rather than import (and start) airflow.
        sections.update(runpy.run_path(str(info))["get_provider_info"]().get("config") or {})
    return frozenset((s, o) for s, body in sections.items() for o in (body.get("options") or {}))


def _config_field_problem(name: str, model: type[pydantic.BaseModel]) -> str | None:
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            known = ", ".join(sorted(model.model_fields))
            return f"{name}: {'.'.join(parts[: depth + 1])} is not in the config (known here: {known})"
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
        if depth == len(parts) - 1:
            return f"{name}: names the section {part!r}, not a field" if is_section else None
        if not is_section:
            return f"{name}: {part!r} is a field, it has no {parts[depth + 1]!r}"
        model = annotation
    return None


def env_name_problems(
    names: Iterable[str],
    *,
    config_model: type[pydantic.BaseModel] = ICGConfig,
    code: str | None = None,
    sdk: str | None = None,
    airflow: frozenset[tuple[str, str]] | None = None,
) -> list[str]:
    """Names among ``names`` that nothing reads (other prefixes are not this project's business)."""
    problems = []
    for name in sorted(set(names)):
        if name.startswith(ENV_PREFIX):
            problem = _config_field_problem(name, config_model)
            problems += [problem] if problem else []
        elif name.startswith("ICG"):
            if not re.search(rf"[\"']{re.escape(name)}[\"']", project_sources() if code is None else code):
                problems.append(f"{name}: no .py file under {', '.join(PROJECT_CODE_DIRS)} reads it")
        elif name.startswith("AWS_"):
            text = (project_sources() if code is None else code) + (
                botocore_sources() if sdk is None else sdk
            )
            if not re.search(rf"[\"']{re.escape(name)}[\"']", text):
                problems.append(f"{name}: neither the project nor botocore reads it")
        elif name.startswith("AIRFLOW__"):
            section, _, option = name[len("AIRFLOW__") :].lower().partition("__")
            known = airflow_options() if airflow is None else airflow
            # OPTION_CMD / OPTION_SECRET read the value from a command or a secrets backend.
            if (section, option) not in known and (
                section,
                re.sub(r"_(cmd|secret)$", "", option),
            ) not in known:
                problems.append(f"{name}: [{section}] {option} is not an Airflow configuration option")
    return problems


# ----------------------------------------------------------------------------- who sets what
def _walk(node: Any, path: str) -> Iterable[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def manifest_settings(doc: Any, where: str, config_maps: dict[str, Any] | None = None) -> list[EnvSetting]:
    """``env`` entries anywhere in a manifest or values file, plus ConfigMaps pulled in by ``envFrom``."""
    found = []
    for path, key, value in _walk(doc, where):
        if key == "env" and isinstance(value, list):
            found += [
                EnvSetting(path, str(e["name"]), str(e.get("value", "")))
                for e in value
                if isinstance(e, dict) and "name" in e
            ]
        elif key == "configMapRef" and isinstance(value, dict):
            config_map = (config_maps or {}).get(value.get("name")) or find_object(
                "ConfigMap", value.get("name", "")
            )
            data = (config_map or {}).get("data") or {}
            found += [EnvSetting(f"{path} envFrom {value.get('name')}", k, str(v)) for k, v in data.items()]
    return found


def all_settings() -> list[EnvSetting]:
    settings = [
        EnvSetting(f"compose {name}", k, v)
        for name, service in load_compose()["services"].items() for k, v in compose_environment(service).items()
    ]  # fmt: skip
    for dockerfile in sorted(DOCKER_DIR.glob("Dockerfile*")):
        for keyword, args in dockerfile_instructions(dockerfile.read_text(encoding="utf-8")):
            if keyword == "ENV":
                settings += [
                    EnvSetting(dockerfile.name, *pair.split("=", 1)) for pair in args.split() if "=" in pair
                ]
    for path, obj in k8s_objects():
        settings += manifest_settings(obj, f"{path.name} {obj['kind']}")
    job = yaml.safe_load(render_template(RAYJOB_TEMPLATE, STAGE="validate", DS="2026-11-15"))
    settings += manifest_settings(job, RAYJOB_TEMPLATE.name)
    settings += manifest_settings(yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8")), HELM_VALUES.name)
    return settings


# ----------------------------------------------------------------------------- what stage runners need
def _set_fields(tree: dict[str, Any]) -> set[str]:
    return {f"{s}.{f}" for s, body in (tree or {}).items() if isinstance(body, dict) for f in body}


def stage_env_problems(
    where: str, env: dict[str, str], resolve: Callable[[str], Path | None]
) -> tuple[list[str], Any]:
    """Problems of a stage runner's environment; also its loaded config (None when it cannot load)."""
    if not env.get("ICG_CONFIG"):
        return [f"{where}: runs stages but sets no ICG_CONFIG"], None
    config_file = resolve(env["ICG_CONFIG"])
    if config_file is None:
        return [f"{where}: ICG_CONFIG={env['ICG_CONFIG']} is not a mounted file"], None
    try:
        config = load_config(environ={**env, "ICG_CONFIG": str(config_file)})
    except (pydantic.ValidationError, ValueError) as exc:
        return [f"{where}: the config does not load: {exc}"], None
    problems = []
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", config.storage.root):
        problems.append(f"{where}: storage.root {config.storage.root!r} is not an s3://bucket/prefix root")
    overrides = {
        f"{k[len(ENV_PREFIX) :].lower().replace('__', '.')}" for k in env if k.startswith(ENV_PREFIX)
    }
    provided = _set_fields(yaml.safe_load(config_file.read_text(encoding="utf-8"))) | overrides
    missing = _set_fields(yaml.safe_load(CLUSTER_EXAMPLE.read_text(encoding="utf-8"))) - provided
    if missing:
        problems.append(f"{where}: does not set {sorted(missing)}, which configs/cluster.example.yaml sets")
    return problems, config


def compose_problems(compose: dict[str, Any], compose_dir: Path = COMPOSE_DIR) -> list[str]:
    services = compose["services"]
    heads = [n for n, s in services.items() if re.search(r"ray start .*--head", command_text(s))]
    if len(heads) != 1:
        return [f"compose: expected one Ray head (ray start --head), found {heads}"]
    port = re.search(r"--dashboard-port[= ](\d+)", command_text(services[heads[0]]))
    jobs_address = f"http://{heads[0]}:{port[1] if port else 8265}"
    problems = []
    for name, service in services.items():
        env, command = compose_environment(service), command_text(service)
        if "ray start" in command or any(k == "ICG_CONFIG" or k.startswith(ENV_PREFIX) for k in env):
            mounts = compose_mounts(service, compose_dir)
            found, config = stage_env_problems(f"compose {name}", env, lambda p, m=mounts: m.get(p))
            problems += found
            endpoint = re.match(
                r"https?://([^:/]+)", (config.storage.s3_endpoint_url or "") if config else ""
            )
            if config and (not endpoint or endpoint[1] not in services):
                problems.append(
                    f"compose {name}: the S3 endpoint {config.storage.s3_endpoint_url!r} is not a service of the stack"
                )
            if config and not all(env.get(k) for k in STATIC_KEYS):
                problems.append(f"compose {name}: needs {' and '.join(STATIC_KEYS)} (no IAM role on one box)")
        runs_tasks = re.match(r"airflow (scheduler|celery worker)", command)
        if (runs_tasks or "ICG_RAY_JOBS_ADDRESS" in env) and env.get("ICG_RAY_JOBS_ADDRESS") != jobs_address:
            problems.append(
                f"compose {name}: ICG_RAY_JOBS_ADDRESS={env.get('ICG_RAY_JOBS_ADDRESS')!r}, expected {jobs_address}"
            )
    return problems


def _configmap_file(
    spec: dict[str, Any], container: dict[str, Any], path: str, config_maps: dict[str, Any], workdir: Path
) -> Path | None:
    """The file a container sees at ``path`` when it comes from a ConfigMap volume, copied to ``workdir``."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        target = mount["mountPath"].rstrip("/")
        if path != target and not path.startswith(target + "/"):
            continue
        source = (volumes.get(mount["name"]) or {}).get("configMap")
        config_map = config_maps.get(source["name"]) if source else None
        if config_map is None:
            continue
        key = mount.get("subPath") or path[len(target) + 1 :]
        key = next((i["key"] for i in source.get("items") or [] if i["path"] == key), key)
        if key in (config_map.get("data") or {}):
            copied = workdir / f"{source['name']}-{key}"
            copied.write_text(config_map["data"][key], encoding="utf-8")
            return copied
    return None


def kubernetes_problems(objects: list[dict[str, Any]], helm_values: dict[str, Any]) -> list[str]:
    problems = []
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    with tempfile.TemporaryDirectory() as tmp:
        for obj in (o for o in objects if o["kind"] in ("RayCluster", "RayJob")):
            for where, template in pod_templates(obj):
                if where == "submitterPodTemplate":
                    continue  # submits to the Jobs API; runs no stage
                spec, label = template.get("spec") or {}, f"{obj['kind']}/{obj['metadata']['name']} {where}"
                for container in spec.get("containers") or []:
                    env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
                    resolve = lambda p, s=spec, c=container: _configmap_file(s, c, p, config_maps, Path(tmp))  # noqa: E731
                    problems += stage_env_problems(label, env, resolve)[0]
                    if any(k in env for k in STATIC_KEYS):
                        problems.append(
                            f"{label}: sets static AWS keys; the pods' service account (IRSA) provides credentials"
                        )
                account = accounts.get(spec.get("serviceAccountName", ""))
                annotations = (account or {}).get("metadata", {}).get("annotations") or {}
                if not any(a in annotations for a in WORKLOAD_IDENTITY_ANNOTATIONS):
                    problems.append(
                        f"{label}: service account {spec.get('serviceAccountName')!r} has no cloud IAM role annotation"
                    )
    clusters = [o for o in objects if o["kind"] == "RayCluster"]
    if len(clusters) != 1:
        return problems + [f"kubernetes: expected one RayCluster, found {len(clusters)}"]
    head = clusters[0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    port = next((p["containerPort"] for p in head.get("ports") or [] if p.get("name") == "dashboard"), 8265)
    meta = clusters[0]["metadata"]
    expected = f"http://{meta['name']}-head-svc.{meta['namespace']}.svc.cluster.local:{port}"
    given = {e["name"]: e.get("value") for e in helm_values.get("env") or []}.get("ICG_RAY_JOBS_ADDRESS")
    if given != expected:
        problems.append(f"helm values: ICG_RAY_JOBS_ADDRESS={given!r}, expected the head service {expected}")
    for section, options in (helm_values.get("config") or {}).items():
        problems += env_name_problems(f"AIRFLOW__{section}__{option}".upper() for option in options)
    return problems


def dotenv_problems(compose_text: str, dotenv: dict[str, str]) -> list[str]:
    used, defined = interpolation_names(compose_text), set(dotenv)
    return [f"compose uses ${{{n}}} but .env.example does not define it" for n in sorted(used - defined)] + [
        f".env.example defines {n} but the compose file never uses it" for n in sorted(defined - used)
    ]


# ----------------------------------------------------------------------------- the repository's files
def test_every_variable_infra_sets_is_read_by_something() -> None:
    settings = all_settings()
    names = {s.name for s in settings}
    assert {"ICG_CONFIG", "ICG__STORAGE__ROOT", "ICG_RAY_JOBS_ADDRESS", "AWS_ACCESS_KEY_ID"} <= names
    where = {s.name: s.where for s in settings}
    assert [f"{p} (set in {where[p.split(':')[0]]})" for p in env_name_problems(names)] == []


def test_compose_stage_runners_and_airflow_get_what_they_need() -> None:
    assert compose_problems(load_compose()) == []


def test_kubernetes_stage_runners_and_airflow_get_what_they_need() -> None:
    objects = [obj for _, obj in k8s_objects()]
    job = yaml.safe_load(render_template(RAYJOB_TEMPLATE, STAGE="validate", DS="2026-11-15"))
    assert kubernetes_problems(objects + [job], yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))) == []


def test_env_example_and_compose_name_the_same_variables() -> None:
    assert dotenv_problems(COMPOSE_FILE.read_text(encoding="utf-8"), read_dotenv(ENV_EXAMPLE)) == []


# ----------------------------------------------------------------------------- the checkers can fail
def test_checker_rejects_names_nothing_reads() -> None:
    good = [
        "ICG__STORAGE__ROOT",
        "ICG__WORLD__N_ITEMS",
        "ICG_CONFIG",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW__CORE__FERNET_KEY_CMD",
    ]
    assert env_name_problems(good) == []
    bad = ["ICG__STORAGE__BUKET", "ICG__NOPE__ROOT", "ICG__STORAGE", "ICG__STORAGE__ROOT__X", "ICG_NOT_READ_ANYWHERE",
           "AWS_NOT_A_REAL_SETTING", "AIRFLOW__CORE__NOT_AN_OPTION"]  # fmt: skip
    problems = env_name_problems(bad)
    assert len(problems) == len(bad), problems
    assert env_name_problems(["ICG_CONFIG"], code="nothing here") != []


def test_checker_rejects_a_stage_runner_without_what_it_needs() -> None:
    compose = load_compose()
    head = compose["services"]["ray-head"]
    head["environment"] = {k: v for k, v in compose_environment(head).items() if k != "AWS_SECRET_ACCESS_KEY"}
    head["environment"]["ICG__STORAGE__ROOT"] = "./data"
    worker = compose["services"]["ray-gpu-worker"]
    worker["environment"] = {**compose_environment(worker), "ICG_CONFIG": "/not/mounted.yaml"}
    compose["services"]["objectstore-init"]["environment"] = {"ICG__STORAGE__ROOT": "s3://b/icg"}
    compose["services"]["airflow-scheduler"]["environment"]["ICG_RAY_JOBS_ADDRESS"] = "http://elsewhere:8265"
    problems = "\n".join(compose_problems(compose))
    for expected in ("is not an s3://bucket/prefix root", "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                     "/not/mounted.yaml is not a mounted file", "objectstore-init: runs stages but sets no ICG_CONFIG",
                     "airflow-scheduler: ICG_RAY_JOBS_ADDRESS='http://elsewhere:8265'"):  # fmt: skip
        assert expected in problems


def test_checker_rejects_static_keys_missing_identity_and_missing_fields_on_kubernetes() -> None:
    objects = copy.deepcopy([obj for _, obj in k8s_objects()])
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "change-me"}
    )
    next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["annotations"] = {}
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    config_map["data"]["cluster.yaml"] = "storage:\n  root: s3://icg-example-bucket/icg\n"
    values = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))
    values["env"] = []
    values["config"]["core"]["no_such_option"] = "x"
    problems = "\n".join(kubernetes_problems(objects, values))
    for expected in ("sets static AWS keys", "has no cloud IAM role annotation", "does not set [", "'extract.lookback_days'",
                     "ICG_RAY_JOBS_ADDRESS=None", "[core] no_such_option"):  # fmt: skip
        assert expected in problems


def test_checker_rejects_dangling_interpolation_names() -> None:
    problems = dotenv_problems("image: x:${TAG}\nuser: ${UID:-1000}", {"UNUSED": "1", "TAG": "1"})
    assert problems == [
        "compose uses ${UID} but .env.example does not define it",
        ".env.example defines UNUSED but the compose file never uses it",
    ]


def test_collector_finds_env_and_envfrom_settings() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "env": [{"name": "ICG_TYPO", "value": "1"}],
                    "envFrom": [{"configMapRef": {"name": "extra"}}],
                }
            ]
        }
    }
    settings = manifest_settings(pod, "pod", {"extra": {"data": {"ICG__STORAGE__ROOTS": "s3://b/p"}}})
    assert {s.name for s in settings} == {"ICG_TYPO", "ICG__STORAGE__ROOTS"}
    assert len(env_name_problems(s.name for s in settings)) == 2
