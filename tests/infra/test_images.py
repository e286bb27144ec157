"""The images: pinned bases, the project's pins, a non-root user, nothing secret, a tight build context.

No container engine runs here, so the Dockerfiles are read, not built: every base image has an exact
tag, torch and Python match pyproject.toml, the final stage runs as a non-root user, no ENV or ARG
carries a secret, every COPY source survives ``.dockerignore`` while ``.venv``, ``data``, ``.airflow``
and caches do not, and ``constraints.txt`` agrees with every pin of pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.infra import DOCKER_DIR, REPO, dockerfile_instructions

DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile*"))
CONSTRAINTS = DOCKER_DIR / "constraints.txt"
DOCKERIGNORE = REPO / ".dockerignore"
MUST_STAY_OUT = [".venv/bin/python", "data/raw/impressions/ds=2026-11-14/part.parquet", ".airflow/airflow.db",
                 ".git/HEAD", ".pytest_cache/v/cache/nodeids", "icg_core/__pycache__/config.cpython-311.pyc",
                 "infra/compose/.env", "tests/conftest.py", "models/ckpt.safetensors"]  # fmt: skip


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def pyproject_pins(project: dict) -> dict[str, str]:
    pins = {}
    for dep in project["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", dep.strip())
        if match:
            pins[_normalize(match[1])] = match[2]
    return pins


# ----------------------------------------------------------------------------- checkers
def dockerfile_problems(text: str, project: dict) -> list[str]:
    instructions = dockerfile_instructions(text)
    args = {}  # ARG defaults before the first FROM are what FROM lines can use
    for keyword, rest in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    problems, stages, users = [], set(), []
    pins, wanted_python = (
        pyproject_pins(project),
        re.search(r">=(\d+\.\d+)", project["project"]["requires-python"])[1],
    )
    for keyword, rest in instructions:
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), parts[0])
            if image not in stages:
                name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
                if not tag or tag == "latest":
                    problems.append(f"base image {image!r} is not pinned to an exact tag")
                if name.endswith("python") and not tag.startswith(wanted_python + "."):
                    problems.append(f"base image {image!r} is not Python {wanted_python}.x (requires-python)")
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
            users = []  # USER applies per stage; only the final stage's counts
        elif keyword == "USER":
            users.append(rest.split(":")[0])
        elif keyword in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + rest) or [rest.split("=")[0]]:
                if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL", name, re.IGNORECASE):
                    problems.append(
                        f"{keyword} {name}: secrets must come from the environment at run time, not the image"
                    )
        elif keyword in ("COPY", "ADD"):
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            if "--from" not in rest and any(
                s in (".", "./") or ".env" in s or s.startswith("data") for s in sources
            ):
                problems.append(f"{keyword} {rest}: copies the whole context, data or an env file")
    if not users or users[-1] in ("root", "0"):
        problems.append(
            f"the final stage must switch to a non-root USER (got {users[-1] if users else 'none'})"
        )
    # torch is installed on its own (its build differs per image); everything else through the wheel.
    found = set(re.findall(r"\btorch==([0-9][^\s\"']*)", text))
    if found != {pins["torch"]}:
        problems.append(f"torch installed at {sorted(found)} but pyproject.toml pins {pins['torch']}")
    for keyword, rest in instructions:
        if (
            keyword == "RUN"
            and re.search(r"pip install\b", rest)
            and "--no-deps" not in rest
            and "--constraint" not in rest
        ):
            problems.append(f"pip install without --constraint: {rest[:80]}")
    return problems


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
    body = "".join(
        {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(p, re.escape(p)) for p in parts
    )
    return re.compile(body)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative to the context) is left out: the last matching pattern wins, and a
    pattern matching a parent folder matches everything below it (Docker's rules)."""
    excluded = False
    candidates = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    for raw in patterns:
        negate, pattern = raw.startswith("!"), raw.lstrip("!").strip()
        if any(_pattern_regex(pattern).fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def read_dockerignore(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def copy_sources(text: str) -> list[str]:
    """Context paths the Dockerfile copies (COPY without --from)."""
    sources = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    return sources


def constraints_problems(constraints_text: str, project: dict) -> list[str]:
    pinned = {}
    for line in constraints_text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[_normalize(name)] = version.strip()
    problems = [
        f"{name}=={version} in pyproject.toml but {pinned.get(name, 'absent')} in constraints.txt"
        for name, version in sorted(pyproject_pins(project).items())
        if name != "torch" and pinned.get(name) != version
    ]
    if "torch" in pinned:
        problems.append("torch must not be in constraints.txt (each image picks its CPU or CUDA build)")
    if problems:
        problems.append("regenerate with: bash infra/docker/refresh-constraints.sh")
    return problems


# ----------------------------------------------------------------------------- the repository's files
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_secret_free(path: Path) -> None:
    assert dockerfile_problems(path.read_text(encoding="utf-8"), pyproject()) == []


def test_the_two_images_differ_only_in_their_torch_build() -> None:
    cpu, cuda = (dockerfile_instructions(p.read_text(encoding="utf-8")) for p in DOCKERFILES)
    assert [k for k, _ in cpu] == [k for k, _ in cuda], "same stages and steps"
    assert {k for (k, a), (_, b) in zip(cpu, cuda, strict=True) if a != b} <= {"ARG", "LABEL", "ENV"}
    cpu_text, cuda_text = (p.read_text(encoding="utf-8") for p in DOCKERFILES)
    assert "download.pytorch.org/whl/cpu" in cpu_text and "NVIDIA_VISIBLE_DEVICES" in cuda_text


def test_dockerignore_keeps_local_state_out_and_every_copied_path_in() -> None:
    patterns = read_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))
    assert [p for p in MUST_STAY_OUT if not dockerignore_excludes(patterns, p)] == []
    copied = {s for p in DOCKERFILES for s in copy_sources(p.read_text(encoding="utf-8"))}
    samples = []
    for source in sorted(copied):
        target = REPO / source
        assert target.exists(), f"COPY {source}: not in the repository"
        files = (
            [f for f in target.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
            if target.is_dir()
            else [target]
        )
        samples += [str(f.relative_to(REPO)) for f in files]
    assert samples and [s for s in samples if dockerignore_excludes(patterns, s)] == []


def test_constraints_agree_with_pyproject() -> None:
    assert constraints_problems(CONSTRAINTS.read_text(encoding="utf-8"), pyproject()) == []


# ----------------------------------------------------------------------------- the checkers can fail
def test_checker_rejects_a_bad_dockerfile() -> None:
    bad = (
        "FROM python:latest AS build\nUSER 50000\nFROM python:3.12.1-slim\nENV AWS_SECRET_ACCESS_KEY=x\n"
        "COPY . /app\nRUN pip install torch==2.12.0 numpy\nUSER root\n"
    )
    problems = "\n".join(dockerfile_problems(bad, pyproject()))
    for expected in ("'python:latest' is not pinned", "is not Python 3.11.x", "ENV AWS_SECRET_ACCESS_KEY",
                     "copies the whole context", "torch installed at ['2.12.0']", "pip install without --constraint",
                     "non-root USER (got root)"):  # fmt: skip
        assert expected in problems


def test_checker_rejects_a_leaky_dockerignore() -> None:
    patterns = ["**/__pycache__", "data/"]
    assert dockerignore_excludes(patterns, "data/raw/x.parquet")
    assert not dockerignore_excludes(patterns, ".venv/bin/python")
    assert not dockerignore_excludes(["*", "!icg_core/"], "icg_core/world/oracle.py")
    assert dockerignore_excludes(["*", "!icg_core/", "**/*.pyc"], "icg_core/x.pyc")


def test_checker_rejects_stale_constraints() -> None:
    text = CONSTRAINTS.read_text(encoding="utf-8").replace("\nray==", "\nray==0.0.1+") + "torch==2.13.0\n"
    problems = "\n".join(constraints_problems(text, pyproject()))
    assert "ray==2.60.0 in pyproject.toml" in problems and "torch must not be" in problems
    assert "refresh-constraints.sh" in problems
