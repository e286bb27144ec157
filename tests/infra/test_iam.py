"""infra/iam: least privilege, checked against the object prefixes the code actually writes.

- No Allow statement grants a wildcard action (``*``, ``s3:*``, ``s3:Get*``), ``NotAction``, resource
  ``*`` or every bucket, or a public principal; listing is always limited by an ``s3:prefix`` condition.
- The pipeline role may write every top-level area the code writes (found by reading the code's key
  prefixes and area names), reads ``raw/`` without writing it, and covers the issue's areas.
- The bucket policy denies plain-HTTP access; the downstream reader policy reads manifests/ and
  covers/ only; the role's trust policy admits exactly the Kubernetes service account that carries it.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra import IAM_DIR, PROJECT_CODE_DIRS, REPO, find_object

BUCKET = "icg-example-bucket"  # placeholder, see infra/iam/README.md
ROOT_PREFIX = "icg"  # the prefix of storage.root: s3://icg-example-bucket/icg
PIPELINE = IAM_DIR / "pipeline-role-policy.json"
READER = IAM_DIR / "downstream-reader-policy.json"
BUCKET_POLICY = IAM_DIR / "bucket-policy.json"
TRUST = IAM_DIR / "pipeline-role-trust-policy.json"
READ_ONLY_AREAS = {"raw"}  # written by the platform's export jobs (or `icg import`) under their own role
NOT_ON_A_CLUSTER = {"oracle", "_faults"}  # the embedded world's hidden truth; test-only fault markers
ISSUE_WRITE_AREAS = {"validated", "features", "models", "covers", "manifests", "reports"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject"}
READ_ACTIONS = {"s3:GetObject", "s3:ListBucket"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in _as_list(policy["Statement"]) if s.get("Effect") == "Allow"]


def areas_with(policy: dict[str, Any], actions: set[str]) -> set[str]:
    """Top-level areas under the root on which an Allow statement grants any of ``actions``."""
    found = set()
    for statement in _allows(policy):
        if actions & set(_as_list(statement.get("Action", []))):
            for resource in _as_list(statement.get("Resource", [])):
                match = re.fullmatch(rf"arn:aws:s3:::{BUCKET}/{ROOT_PREFIX}/([^/*]+)/\*", resource)
                if match:
                    found.add(match[1])
    return found


# ----------------------------------------------------------------------------- checkers
def wildcard_problems(policy: dict[str, Any]) -> list[str]:
    problems = []
    for statement in _allows(policy):
        sid = statement.get("Sid", "?")
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{sid}: Allow with NotAction/NotResource grants everything else")
        problems += [
            f"{sid}: wildcard action {a!r}" for a in _as_list(statement.get("Action", [])) if "*" in a
        ]
        for resource in _as_list(statement.get("Resource", [])):
            if resource == "*" or re.match(r"arn:aws:s3:::[^/]*\*", resource):
                problems.append(f"{sid}: wildcard resource {resource!r}")
        if "*" in json.dumps(statement.get("Principal", "")):
            problems.append(f"{sid}: Allow to a public principal")
        if "s3:ListBucket" in _as_list(statement.get("Action", [])):
            conditions = statement.get("Condition") or {}
            prefixes = [
                v for op, keys in conditions.items() if op.startswith(("StringLike", "StringEquals"))
                for v in _as_list(keys.get("s3:prefix", []))
            ]  # fmt: skip
            if not prefixes or any(p in ("", "*") for p in prefixes):
                problems.append(f"{sid}: s3:ListBucket must be limited by an s3:prefix condition")
    return problems


STORE_KEY_METHODS = {
    "put_bytes",
    "put_json",
    "get_bytes",
    "get_json",
    "exists",
    "list",
    "delete",
    "delete_prefix",
    "uri",
}


def code_areas(roots: list[Path]) -> dict[str, str]:
    """Top-level object areas the code names: ``*_AREA`` / ``*_PREFIX`` constants, ``area=`` arguments,
    f-string keys such as ``f"reports/ds={ds}/..."`` and literal keys given to the store's methods.
    Returns area -> where it was first found."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            where = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                keys: list[Any] = []
                # icg_core/layout.py names every area as an upper-case constant; elsewhere, old-style
                # *_AREA / *_PREFIX constants would be caught here too.
                constant = r"^[A-Z_]+$" if path.name == "layout.py" else r"_(AREA|PREFIX)$"
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and re.search(constant, t.id) for t in node.targets
                ):
                    keys.append(node.value)
                elif isinstance(node, ast.keyword) and node.arg == "area":
                    keys.append(node.value)
                elif isinstance(node, ast.JoinedStr) and node.values:
                    keys.append(node.values[0])  # only counts when it reads like "area/..."
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                    if node.func.attr in STORE_KEY_METHODS:
                        keys.append(node.args[0])
                for key in keys:
                    if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                        continue
                    match = re.fullmatch(r"([a-z_][a-z0-9_]+)(/[^\s]*)?", key.value)
                    slash_needed = isinstance(node, ast.JoinedStr)
                    if match and (match[2] or not slash_needed):
                        found.setdefault(match[1], f"{where}:{node.lineno}")
    return found


def coverage_problems(policy: dict[str, Any], areas: dict[str, str]) -> list[str]:
    writable, readable = areas_with(policy, WRITE_ACTIONS), areas_with(policy, {"s3:GetObject"})
    problems = [
        f"the code writes {area}/ ({where}) but the pipeline role may not"
        for area, where in sorted(areas.items()) if area not in writable | READ_ONLY_AREAS | NOT_ON_A_CLUSTER
    ]  # fmt: skip
    problems += [
        f"the pipeline role may write {a}/, which is read-only for it"
        for a in sorted(writable & READ_ONLY_AREAS)
    ]
    problems += [f"the pipeline role cannot read {a}/" for a in sorted(READ_ONLY_AREAS - readable)]
    problems += [
        f"the pipeline role cannot write {a}/ (required by the deployment issue)"
        for a in sorted(ISSUE_WRITE_AREAS - writable)
    ]
    problems += [f"the pipeline role cannot read {a}/ that it writes" for a in sorted(writable - readable)]
    return problems


def bucket_policy_problems(policy: dict[str, Any]) -> list[str]:
    for statement in _as_list(policy["Statement"]):
        condition = (statement.get("Condition") or {}).get("Bool") or {}
        if (
            statement.get("Effect") == "Deny"
            and statement.get("Principal") == "*"
            and "s3:*" in _as_list(statement.get("Action"))
            and str(condition.get("aws:SecureTransport")).lower() == "false"
            and {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
            <= set(_as_list(statement.get("Resource")))
        ):
            return []
    return [
        "no statement denies every request without TLS (aws:SecureTransport false) on the bucket and its objects"
    ]


def reader_problems(policy: dict[str, Any]) -> list[str]:
    problems = [
        f"{s.get('Sid')}: {a} is not a read action"
        for s in _allows(policy) for a in _as_list(s.get("Action", [])) if a not in READ_ACTIONS
    ]  # fmt: skip
    readable = areas_with(policy, {"s3:GetObject"})
    if readable != {"manifests", "covers"}:
        problems.append(f"readers must read exactly manifests/ and covers/, not {sorted(readable)}")
    return problems


def trust_problems(trust: dict[str, Any], account: dict[str, Any]) -> list[str]:
    """The role's trust policy admits the service account that carries the role, and nothing else."""
    meta = account["metadata"]
    subject = f"system:serviceaccount:{meta['namespace']}:{meta['name']}"
    role_arn = (meta.get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
    problems = []
    for statement in _allows(trust):
        if statement.get("Action") != "sts:AssumeRoleWithWebIdentity":
            problems.append(f"{statement.get('Sid')}: only sts:AssumeRoleWithWebIdentity may be allowed")
        subs = {
            v
            for k, v in ((statement.get("Condition") or {}).get("StringEquals") or {}).items()
            if k.endswith(":sub")
        }
        if subs != {subject}:
            problems.append(
                f"{statement.get('Sid')}: must be limited to the subject {subject}, got {sorted(subs)}"
            )
        account_id = re.search(r"arn:aws:iam::(\d{12}):", json.dumps(statement.get("Principal")))
        if not account_id or f"::{account_id[1]}:" not in role_arn:
            problems.append(
                f"{statement.get('Sid')}: the OIDC provider's account differs from the role {role_arn!r}"
            )
    return problems


# ----------------------------------------------------------------------------- the repository's files
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(IAM_DIR.glob("*.json")), ids=lambda p: p.name)
def test_no_policy_grants_wildcards(path: Path) -> None:
    assert wildcard_problems(_load(path)) == []


def test_pipeline_role_covers_what_the_code_writes_and_no_more_than_it_should() -> None:
    areas = code_areas([REPO / d for d in PROJECT_CODE_DIRS])
    assert {"raw", "staging", "validated", "reports"} <= set(areas), areas  # the scan still sees the code
    assert coverage_problems(_load(PIPELINE), areas) == []


def test_bucket_denies_plain_http() -> None:
    assert bucket_policy_problems(_load(BUCKET_POLICY)) == []


def test_downstream_readers_read_published_covers_only() -> None:
    assert reader_problems(_load(READER)) == []


def test_trust_policy_admits_exactly_the_pipeline_service_account() -> None:
    assert trust_problems(_load(TRUST), find_object("ServiceAccount", "icg-pipeline")) == []


# ----------------------------------------------------------------------------- the checkers can fail
def test_checker_rejects_wildcards_public_principals_and_unbounded_listing() -> None:
    policy = {"Statement": [
        {"Sid": "A", "Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Sid": "B", "Effect": "Allow", "Action": ["s3:Get*"], "Resource": "arn:aws:s3:::*"},
        {"Sid": "C", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        {"Sid": "D", "Effect": "Allow", "NotAction": "iam:*", "Resource": f"arn:aws:s3:::{BUCKET}/x/*", "Principal": "*"},
        {"Sid": "E", "Effect": "Deny", "Action": "s3:*", "Resource": "*"},  # a broad Deny is fine
    ]}  # fmt: skip
    problems = "\n".join(wildcard_problems(policy))
    for expected in ("A: wildcard action 's3:*'", "A: wildcard resource '*'", "B: wildcard action 's3:Get*'",
                     "B: wildcard resource 'arn:aws:s3:::*'", "C: s3:ListBucket must be limited", "D: Allow with NotAction",
                     "D: Allow to a public principal"):  # fmt: skip
        assert expected in problems
    assert "E:" not in problems


def test_checker_rejects_a_role_missing_an_area_the_code_writes(tmp_path: Path) -> None:
    (tmp_path / "stage.py").write_text(
        'EMBEDDINGS_AREA = "embeddings"\nstore.put_json(f"audit/ds={ds}/x.json", {})\n'
    )
    areas = code_areas([tmp_path])
    assert set(areas) == {"embeddings", "audit"}
    problems = "\n".join(coverage_problems(_load(PIPELINE), areas))
    assert "writes embeddings/" in problems and "writes audit/" in problems
    policy = copy.deepcopy(_load(PIPELINE))
    policy["Statement"][1]["Action"] = ["s3:GetObject", "s3:PutObject"]  # raw/ becomes writable
    assert "may write raw/" in "\n".join(coverage_problems(policy, {}))


def test_checker_rejects_weak_bucket_reader_and_trust_policies() -> None:
    bucket = copy.deepcopy(_load(BUCKET_POLICY))
    bucket["Statement"] = [s for s in bucket["Statement"] if "aws:SecureTransport" not in json.dumps(s)]
    assert bucket_policy_problems(bucket)
    reader = copy.deepcopy(_load(READER))
    reader["Statement"][1]["Action"] = ["s3:GetObject", "s3:PutObject"]
    reader["Statement"][1]["Resource"].append(f"arn:aws:s3:::{BUCKET}/{ROOT_PREFIX}/models/*")
    assert len(reader_problems(reader)) == 2
    trust = copy.deepcopy(_load(TRUST))
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    sub_key = next(k for k in condition if k.endswith(":sub"))
    condition[sub_key] = "system:serviceaccount:icg:*"
    assert any(
        "must be limited to the subject" in p
        for p in trust_problems(trust, find_object("ServiceAccount", "icg-pipeline"))
    )
