"""Checks of the deployment files under ``infra/`` (no container engine or cluster runs here).

This module holds what the check modules share: where the files are, how compose files are read
(``${VAR}`` interpolated from ``.env.example``, as ``docker compose`` would with a filled-in ``.env``),
and where the Kubernetes objects are. Each check module has its checker functions (they return a
list of problems, empty when all is well) and feeds each one a bad sample too, so a check that can
no longer fail is noticed.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKER_DIR = INFRA / "docker"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_DIR = INFRA / "k8s"
IAM_DIR = INFRA / "iam"
HELM_VALUES = K8S_DIR / "airflow-values.yaml"
RAYJOB_TEMPLATE = K8S_DIR / "rayjob.template.yaml"
PROJECT_CODE_DIRS = ("icg_core", "pipelines", "dags")  # what runs in the images (tests excluded)

# ${VAR}, ${VAR:?message}, ${VAR?message}, ${VAR:-default}, ${VAR-default}; "$$" is a literal "$".
_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


def infra_files(*suffixes: str) -> list[Path]:
    """Files under ``infra/`` (recursively, dotfiles included), optionally only those ending in ``suffixes``."""
    files = sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [p for p in files if not suffixes or p.name.endswith(suffixes)]


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped, no quoting rules needed)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolation_names(text: str) -> set[str]:
    """Names of the variables a compose file interpolates."""
    return {m["name"] for m in _INTERPOLATION.finditer(text) if m["name"]}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose-style interpolation; a ``${VAR:?msg}`` without a value raises, like ``docker compose``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        # With a colon, an empty value counts as unset.
        if name in values and (values[name] != "" or not op.startswith(":")):
            return values[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return ""

    return _INTERPOLATION.sub(replace, text)


def load_compose(text: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose model as ``docker compose config`` would see it (anchors and merge keys resolved)."""
    text = COMPOSE_FILE.read_text(encoding="utf-8") if text is None else text
    env = read_dotenv(ENV_EXAMPLE) if env is None else env
    return yaml.safe_load(interpolate(text, env))


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``environment`` (mapping or ``KEY=value`` list) as a dict of strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def compose_mounts(service: dict[str, Any], compose_dir: Path = COMPOSE_DIR) -> dict[str, Path]:
    """Bind mounts of a compose service: container path -> host path."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target = (volume.split(":") + [""])[:2]
        if source.startswith((".", "/")):
            mounts[target] = (compose_dir / source).resolve()
    return mounts


def command_text(service: dict[str, Any]) -> str:
    """A compose service's entrypoint + command as one string (list or shell form)."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value:
            parts.append(" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return " ".join(parts)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def render_template(path: Path, **values: str) -> str:
    """Render a ``${NAME}`` template the way ``envsubst`` does for the names given (all required)."""
    return string.Template(path.read_text(encoding="utf-8")).substitute(values)


@lru_cache(maxsize=1)
def k8s_objects() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every Kubernetes object applied from ``infra/k8s`` (the per-run RayJob template excluded)."""
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path == RAYJOB_TEMPLATE:
            continue
        for doc in load_yaml_documents(path):
            if (
                isinstance(doc, dict)
                and "apiVersion" in doc
                and "kind" in doc
                and doc["kind"] != "Kustomization"
            ):
                found.append((path, doc))
    return tuple(found)


def find_object(kind: str, name: str) -> dict[str, Any] | None:
    return next(
        (obj for _, obj in k8s_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name), None
    )


def pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template spec) pairs of a RayCluster or RayJob: head, each worker group, the submitter."""
    spec = obj.get("spec") or {}
    cluster = spec.get("rayClusterSpec") if obj.get("kind") == "RayJob" else spec
    found = []
    if cluster:
        found.append(("headGroupSpec", (cluster.get("headGroupSpec") or {}).get("template") or {}))
        for group in cluster.get("workerGroupSpecs") or []:
            found.append((f"workerGroupSpecs[{group.get('groupName')}]", group.get("template") or {}))
    if obj.get("kind") == "RayJob" and spec.get("submitterPodTemplate"):
        found.append(("submitterPodTemplate", spec["submitterPodTemplate"]))
    return found
