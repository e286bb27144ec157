"""No file under infra/ (nor the image's .dockerignore) holds anything that looks like a credential.

Looked for: AWS access key ids, private key blocks, ``password/secret/token/...key = value`` with a
value that is not a placeholder, credentials inside URLs, and 40-character secret-shaped strings
(the shape of an AWS secret key). Placeholders are ``change-me...``, ``<...>``, ``${VAR...}``, ``null``,
all-caps names such as ``PASSWORD``, and values that name a Kubernetes Secret or one of its keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra import REPO, infra_files

ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
ASSIGNMENT = re.compile(
    r"""(?<![A-Za-z0-9_.${-])(?P<key>[A-Za-z0-9_.-]*?(?:password|passwd|pwd|secret|token|secret[_-]?key|access[_-]?key|api[_-]?key|credentials?))
        ["']?\s*[:=]\s*
        (?P<value>\$\{[^}]*\}|"[^"]*"|'[^']*'|[^\s#,]+)""",
    re.IGNORECASE | re.VERBOSE,
)
URL_CREDENTIAL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<value>\$\{[^}]*\}|[^@\s/]+)@", re.IGNORECASE)
SECRET_SHAPED = re.compile(r"(?<![A-Za-z0-9/+=_.-])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=_.-])")
PLACEHOLDER = re.compile(
    r"(?i:change-?me[\w.-]*|null|none|example[\w.-]*)|<[^>]*>|\$\{[^}]*\}|\$\([^)]*\)|~|[A-Z][A-Z0-9_]*|x+|\*+"
)
SECRET_REFERENCE = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
)  # a Secret's name or key, e.g. icg-airflow-jwt-secret


def _is_placeholder(value: str, key: str = "") -> bool:
    value = value.strip("\"'")
    if value == "" or PLACEHOLDER.fullmatch(value):
        return True
    # camelCase manifest fields that name a Secret or a key in one (jwtSecretName: icg-airflow-jwt-secret,
    # credentialsSecret: icg-git-credentials) carry no secret themselves.
    return bool(
        re.fullmatch(r"[a-z][A-Za-z0-9]*(Name|Ref|Key|Secret)", key) and SECRET_REFERENCE.fullmatch(value)
    )


def credential_findings(text: str) -> list[str]:
    """Credential-looking strings in ``text`` as 'line N: why' (values abbreviated, never printed whole)."""
    findings = []
    for number, line in enumerate(text.splitlines(), start=1):
        if ACCESS_KEY_ID.search(line):
            findings.append(f"line {number}: AWS access key id")
        if PRIVATE_KEY.search(line):
            findings.append(f"line {number}: private key block")
        for match in ASSIGNMENT.finditer(line):
            if not _is_placeholder(match["value"], match["key"]):
                findings.append(
                    f"line {number}: {match['key']} set to a non-placeholder value {match['value'][:3]}..."
                )
        for match in URL_CREDENTIAL.finditer(line):
            if not _is_placeholder(match["value"]):
                findings.append(f"line {number}: credentials inside a URL")
        for match in SECRET_SHAPED.finditer(line):
            token = match[0]
            if re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"[0-9]", token):
                findings.append(f"line {number}: 40-character secret-shaped string {token[:4]}...")
    return findings


def _scanned_files() -> list[Path]:
    return [*infra_files(), REPO / ".dockerignore"]


@pytest.mark.parametrize("path", _scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credential_looking_string(path: Path) -> None:
    assert credential_findings(path.read_text(encoding="utf-8", errors="replace")) == []


def test_scanner_finds_each_kind_of_credential() -> None:
    # Assembled at run time so this file itself never holds a credential-shaped literal.
    key_id = "AKIA" + "Q7" * 8
    secret = "wJalr" + "XUtnF" + "EMI/K7MDENG/bPxRfiCY" + "9x8y7z6w5v4U"[:10]
    samples = {
        "AWS access key id": f"aws_access_key_id = {key_id}",
        "private key block": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "non-placeholder value": "POSTGRES_PASSWORD: hunter2hunter2",
        "credentials inside a URL": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN: postgresql://airflow:s3cr3t@db/airflow",
        "secret-shaped string": f"value: {secret}",
    }
    for why, text in samples.items():
        found = credential_findings(text)
        assert any(why in f for f in found), (why, found)
        assert all(key_id not in f and "hunter2hunter2" not in f for f in found), (
            "findings must not echo secrets"
        )


def test_scanner_accepts_placeholders_and_secret_references() -> None:
    fine = [
        "AWS_SECRET_ACCESS_KEY=change-me",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}",
        "conn: postgresql+psycopg2://airflow:${POSTGRES_PASSWORD:?set it}@postgres:5432/airflow",
        "# key 'connection': postgresql://USER:PASSWORD@HOST:5432/airflow",
        "jwtSecretName: icg-airflow-jwt-secret",
        "s3_endpoint_url: null",
        'image: "registry.example.com/icg:0.1.0"',
        "sha: 0123456789abcdef0123456789abcdef01234567",  # a git sha is not secret-shaped (no upper case)
    ]
    assert [f for line in fine for f in credential_findings(line)] == []
