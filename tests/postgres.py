"""A real PostgreSQL server for the warehouse tests: Debian's binaries, a fresh cluster on 127.0.0.1.

Started once per session (``initdb`` + ``pg_ctl``, trust auth on loopback, no locale so text sorts
by bytes); each test gets a database of its own. PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` system user Debian's package creates. ``make test`` installs the
package when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _server_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} not found: `make test` installs it (apt-get install postgresql)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; :meth:`database` makes an empty database and returns its URI."""

    port: int
    data_dir: Path
    user: str

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import adbc_driver_postgresql.dbapi as postgresql

        name = f"t_{uuid.uuid4().hex[:10]}"
        with postgresql.connect(self.uri(), autocommit=True) as connection:  # CREATE DATABASE: no transaction
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        return self.uri(name)


def _as_server_user() -> list[str]:
    """The command prefix that runs a server binary as a non-root user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # Debian's package creates it; a KeyError names what is missing
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp folder: that is private to root, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="icg-postgres-"))
    prefix = _as_server_user()
    if prefix:
        shutil.chown(base, user="postgres")
    data = base / "data"
    server = PostgresServer(_free_port(), data, "icg")
    ctl = _server_binary("pg_ctl")
    initdb = [
        _server_binary("initdb"),
        "-D",
        str(data),
        "--auth=trust",
        "--no-locale",
        "-E",
        "UTF8",
        "-U",
        "icg",
    ]
    options = f"-h 127.0.0.1 -p {server.port} -k {base} -c fsync=off"
    try:
        _run([*prefix, *initdb])
        _run([*prefix, ctl, "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w", "start"])
        yield server
    finally:
        subprocess.run(
            [*prefix, ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(base, ignore_errors=True)
