"""Object storage over one root URI: ``file://`` (default) or ``s3://bucket/prefix``.

One interface for both backends, so the code that runs on a laptop is the code that runs against S3.
Layout under the root: docs/architecture.md, "Data contracts and object layout".

**Keys, not URIs, in tables.** Every table column that points at an object (a reference image, a
cover, a feature file) holds the object's key relative to the root (``raw/images/reference/i1.png``);
readers resolve it against the store they opened. A root copied, moved or restored from a backup
therefore works unchanged. Absolute URIs written by older versions are still read when they lie under
the current root; ``icg migrate-keys`` rewrites them once (docs/operations.md, "Moving a root").

**Commits.** A partition's data files get unique names; the commit then writes ``_SUCCESS`` (one
object, a JSON list of the partition's files) and only afterwards deletes files of earlier commits.
Readers read exactly the files ``_SUCCESS`` lists, so a rerun never shows half a day, and a partition
without ``_SUCCESS`` does not exist for them. Tables that must change together (a validated day's
catalog and impressions) are committed as one *day*: all their files first, then one marker
``<area>/_days/ds=<ds>/_SUCCESS`` naming every table's files, which readers of that area follow
instead of per-table markers. A table's ``_latest`` object names its newest published ``ds``; it
moves only after that partition is committed. A failed commit deletes what it wrote. Days read by
services that know nothing of the markers (the published manifests) are committed *in place*
instead: one file per table and day under a fixed name, replaced by one atomic write, so a plain
glob never sees a doubled or partial day (docs/consumers.md).

**Errors.** Two kinds, because a scheduler must treat them differently (docs/operations.md, "Exit
codes"): :class:`StorageError` is a verdict on the request (a missing object, a key outside the root,
a file that is not Parquet): retrying gives the same answer. :class:`StorageUnavailable` means the
store could not answer (unreachable, timed out, out of space, read-only, credentials refused): a
crash worth retrying. S3 calls have bounded connect/read timeouts and client retries.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno
import io
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import botocore.exceptions
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from icg_core.config import StorageConfig
from icg_core.data.schemas import conform, empty_table

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LATEST = "_latest"
DAYS = "_days"  # <area>/_days/ds=<ds>/_SUCCESS: the marker of a multi-table day commit
TMP_MARKER = (
    ".tmp-"  # local writes go to <dir>/.<name>.tmp-<hex> first (hidden from globbing readers), then rename(2)
)

# Local errors that say the machine, not the request, is at fault.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class StorageError(RuntimeError):
    """The request cannot succeed as asked (missing object, key outside the root, unreadable file)."""


class StorageUnavailable(RuntimeError):  # noqa: N818 - reads as what happened: the store is unavailable
    """The store could not answer: unreachable, timed out, full, read-only, or credentials refused.

    Not a subclass of :class:`StorageError` on purpose: code that treats a missing or malformed object
    as bad data must not swallow an outage. Stages exit 1 on it, so Airflow retries.
    """


def normalize_root(root: str) -> str:
    """A local path or URI as a canonical root URI without trailing slash."""
    parsed = urlparse(root)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else root
        return "file://" + str(Path(path).expanduser().resolve())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"s3 root needs a bucket: {root!r}")
        return f"s3://{parsed.netloc}{parsed.path.rstrip('/')}"
    raise StorageError(
        f"unsupported root URI scheme {parsed.scheme!r} in {root!r} (use a path, file:// or s3://)"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class PartitionCommit:
    """What a partition commit wrote."""

    table: str
    ds: str
    area: str
    files: tuple[str, ...]
    rows: int


class ObjectStore:
    """Bytes, JSON and Parquet partitions under one root URI.

    Args:
        root: ``file:///abs/path``, a local path, or ``s3://bucket/prefix``.
        s3_endpoint_url: S3-compatible endpoint (``http://127.0.0.1:8333``); None for AWS.
        s3_region: region for the S3 client.
        s3_connect_timeout_s: seconds to wait for a connection to S3.
        s3_read_timeout_s: seconds to wait for an S3 response (a hung server fails, it does not hang us).
        s3_max_attempts: attempts per S3 call (standard retry mode: exponential backoff with jitter).
    """

    def __init__(
        self,
        root: str,
        *,
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
        s3_connect_timeout_s: float = 5.0,
        s3_read_timeout_s: float = 30.0,
        s3_max_attempts: int = 5,
    ) -> None:
        self.root = normalize_root(root)
        self.s3_endpoint_url = (
            s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.s3_region = s3_region
        self.s3_connect_timeout_s = s3_connect_timeout_s
        self.s3_read_timeout_s = s3_read_timeout_s
        self.s3_max_attempts = s3_max_attempts
        parsed = urlparse(self.root)
        self.scheme = parsed.scheme
        self._client: Any = None  # boto3 S3 client, created on first use
        if self.scheme == "file":
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self._base = parsed.path
            self._real_base = os.path.realpath(self._base)  # where every local key must resolve
        else:
            endpoint = urlparse(self.s3_endpoint_url) if self.s3_endpoint_url else None
            # pyarrow's S3 filesystem serves lazy Parquet scans of raw dumps (extract); every other
            # call goes through boto3, whose timeouts hold on Linux too.
            self.fs = pafs.S3FileSystem(
                region=s3_region,
                endpoint_override=endpoint.netloc if endpoint else None,
                scheme=endpoint.scheme if endpoint else "https",
                connect_timeout=s3_connect_timeout_s,
                request_timeout=s3_read_timeout_s,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s3_max_attempts),
                allow_bucket_creation=False,
            )
            self._base = (parsed.netloc + parsed.path).rstrip("/")
            self._bucket, _, prefix = self._base.partition("/")
            self._prefix = f"{prefix}/" if prefix else ""

    @classmethod
    def from_config(cls, storage: StorageConfig, root: str | None = None) -> ObjectStore:
        return cls(root or storage.root, **storage.client_settings())

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that reopen this store (plain values, for other processes)."""
        return {
            "root": self.root,
            "s3_endpoint_url": self.s3_endpoint_url,
            "s3_region": self.s3_region,
            "s3_connect_timeout_s": self.s3_connect_timeout_s,
            "s3_read_timeout_s": self.s3_read_timeout_s,
            "s3_max_attempts": self.s3_max_attempts,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Stores travel to Ray workers; a boto3 client does not pickle, so each process makes its own.
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"ObjectStore({self.root!r})"

    # ----------------------------------------------------------------- errors
    @contextlib.contextmanager
    def errors(self, action: str, key: str = "") -> Iterator[None]:
        """Translate backend exceptions raised inside into :class:`StorageError` / :class:`StorageUnavailable`.

        Args:
            action: what was being done, for the message ("read", "scan raw impressions", ...).
            key: the object concerned ("" for the root).
        """
        where = self.uri(key) if key else self.root
        try:
            yield
        except (StorageError, StorageUnavailable):
            raise
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise StorageError(f"cannot {action} {where}: no such object") from exc
            raise self._unavailable(action, where, exc, code) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise self._unavailable(action, where, exc, "NoCredentials") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._unavailable(action, where, exc) from exc
        except FileNotFoundError as exc:
            raise StorageError(f"cannot {action} {where}: no such object") from exc
        except OSError as exc:
            local_fault = self.scheme == "file" and exc.errno in _ENVIRONMENT_ERRNOS
            if self.scheme == "s3" or local_fault:
                raise self._unavailable(action, where, exc) from exc
            raise StorageError(f"cannot {action} {where}: {_one_line(exc)}") from exc

    def _unavailable(self, action: str, where: str, exc: BaseException, code: str = "") -> StorageUnavailable:
        text = _one_line(exc)
        endpoint = self.s3_endpoint_url or "AWS"
        if code in _CREDENTIAL_CODES or code == "NoCredentials" or "ACCESS_DENIED" in text:
            return StorageUnavailable(
                f"S3 at {endpoint} refused the credentials for {self.root} ({code or 'access denied'}): set "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the workload's IAM role) to an identity "
                "that may read and write the bucket"
            )
        if code == "NoSuchBucket" or "NO_SUCH_BUCKET" in text:
            return StorageUnavailable(f"bucket {self._base.split('/')[0]!r} does not exist at {endpoint}")
        return StorageUnavailable(f"storage unavailable: cannot {action} {where}: {text}")

    # ----------------------------------------------------------------- keys and URIs
    def _path(self, key: str) -> str:
        """The filesystem path of ``key``; never outside the root.

        Raises:
            StorageError: ``key`` has a ``..`` part, or (local roots) resolves outside the root through a
                symbolic link: an object under the root must not read or overwrite a file elsewhere.
        """
        key = key.lstrip("/")
        if ".." in key.split("/"):
            raise StorageError(f"key must not contain '..': {key!r}")
        path = f"{self._base}/{key}" if key else self._base
        if self.scheme == "file":
            real = os.path.realpath(path)
            if real != self._real_base and not real.startswith(self._real_base + os.sep):
                raise StorageError(
                    f"{key!r} resolves outside the root {self.root} (to {real}, a symbolic link)"
                )
        return path

    def _s3_key(self, key: str) -> str:
        self._path(key)  # the same key rules as locally
        return self._prefix + key.lstrip("/")

    def arrow_path(self, key: str) -> str:
        """``key`` as a path on :attr:`fs` (``bucket/key`` on S3, absolute locally), for pyarrow readers."""
        return self._path(key)

    def uri(self, key: str) -> str:
        """The absolute URI of ``key``, for messages and logs (tables store the key itself)."""
        return f"{self.root}/{key.lstrip('/')}"

    def key(self, ref: str) -> str:
        """The key an object reference names: a key relative to the root, or an absolute URI under it.

        Raises:
            StorageError: ``ref`` is an absolute URI under another root (a table written before the root
                moved: run ``icg migrate-keys``), or a key with ``..``.
        """
        if "://" not in ref:
            key = ref.lstrip("/")
            self._path(key)
            return key
        prefix = self.root + "/"
        if not ref.startswith(prefix):
            raise StorageError(
                f"{ref!r} is an absolute URI outside this store's root {self.root!r} "
                "(written before the root moved? run `icg migrate-keys`)"
            )
        return ref[len(prefix) :]

    def fsspec(self) -> Any:
        """An fsspec filesystem for the same root (for DuckDB ``register_filesystem`` and pandas)."""
        if self.scheme == "file":
            import fsspec

            return fsspec.filesystem("file")
        import s3fs

        kwargs: dict[str, Any] = {"client_kwargs": {"region_name": self.s3_region}}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        return s3fs.S3FileSystem(**kwargs)

    def fsspec_path(self, key: str) -> str:
        """``key`` as a path for :meth:`fsspec` (``s3://bucket/key`` or an absolute local path)."""
        return ("s3://" if self.scheme == "s3" else "") + self._path(key)

    # ----------------------------------------------------------------- objects
    def _s3_client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=self.s3_connect_timeout_s,
                read_timeout=self.s3_read_timeout_s,
                retries={"max_attempts": self.s3_max_attempts, "mode": "standard"},
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.s3_endpoint_url, region_name=self.s3_region, config=config
            )
        return self._client

    def _head(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no object at ``key``."""
        with self.errors("stat", key):
            if self.scheme == "file":
                info = self.fs.get_file_info(self._path(key))
                return int(info.size) if info.type == pafs.FileType.File else None
            try:
                head = self._s3_client().head_object(Bucket=self._bucket, Key=self._s3_key(key))
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_CODES:
                    return None
                raise
            return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        size = self._head(key)
        if size is None:
            raise StorageError(f"no object at {self.uri(key)}")
        return size

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write one object atomically (readers see the old or the new object, never a part). Returns its key."""
        with self.errors("write", key):
            if self.scheme == "file":
                self._write_local(key, lambda out: out.write(data))
            else:
                # One PutObject is atomic on S3.
                self._s3_client().put_object(Bucket=self._bucket, Key=self._s3_key(key), Body=data)
        return key.lstrip("/")

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload the local file ``path`` as one object, atomically, without reading it into memory.

        On S3 a large file goes up in parts (boto3's managed transfer), and the object appears only
        when the upload completes. Returns the key.
        """
        with self.errors("write", key):
            if self.scheme == "file":
                self._write_local(key, lambda out: _copy_into(path, out))
            else:
                self._s3_client().upload_file(str(path), self._bucket, self._s3_key(key))
        return key.lstrip("/")

    def _write_local(self, key: str, write: Callable[[Any], object]) -> None:
        """Write a local object through a hidden temporary file and rename(2), atomic on one filesystem."""
        path = self._path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}{TMP_MARKER}{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as out:
                write(out)
            self.fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a failed write leaves nothing behind
            raise

    def get_bytes(self, key: str) -> bytes:
        with self.errors("read", key):
            if self.scheme == "file":
                with self.fs.open_input_stream(self._path(key)) as src:
                    return bytes(src.read())
            response = self._s3_client().get_object(Bucket=self._bucket, Key=self._s3_key(key))
            return bytes(response["Body"].read())

    def read_object(self, ref: str, max_bytes: int | None = None) -> bytes:
        """Read an object named by a table column (a key, or an absolute URI under this root).

        Raises:
            StorageError: no such object, a reference outside the root, or larger than ``max_bytes``.
        """
        key = self.key(ref)
        if max_bytes is not None and self.size(key) > max_bytes:
            raise StorageError(f"{self.uri(key)} is larger than {max_bytes} bytes")
        return self.get_bytes(key)

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.uri(key)} is not valid JSON: {_one_line(exc)}") from exc

    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under ``prefix`` (recursive, sorted); empty if there are none."""
        with self.errors("list", prefix):
            if self.scheme == "file":
                base = self._path(prefix).rstrip("/")
                selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
                try:
                    infos = self.fs.get_file_info(selector)
                except FileNotFoundError:
                    return []
                cut = len(self._base) + 1
                return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)
            start = self._s3_key(prefix).rstrip("/")
            start = f"{start}/" if start else ""
            pages = (
                self._s3_client().get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=start)
            )
            cut = len(self._prefix)
            return sorted(item["Key"][cut:] for page in pages for item in page.get("Contents", []))

    def delete(self, key: str) -> None:
        with self.errors("delete", key):
            if self.scheme == "file":
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(self._path(key))
            else:
                self._s3_client().delete_object(Bucket=self._bucket, Key=self._s3_key(key))

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def check_writable(self) -> None:
        """Fail early, with the root named, if the root cannot be written."""
        probe = f"_probe/{uuid.uuid4().hex}"
        self.put_bytes(probe, b"ok")
        self.delete(probe)

    # ----------------------------------------------------------------- partitions
    @staticmethod
    def partition_prefix(area: str, table: str, ds: str) -> str:
        return f"{area}/{table}/ds={ds}"

    @staticmethod
    def day_marker(area: str, ds: str) -> str:
        """The marker of a multi-table day commit in ``area``."""
        return f"{area}/{DAYS}/ds={ds}/{SUCCESS}"

    def _write_part(
        self, table_name: str, data: pa.Table | ParquetStream, *, ds: str, area: str, in_place: bool = False
    ) -> tuple[str, int]:
        """Write one data file of a partition; returns (its key, its rows).

        By default the file gets a unique name and is not visible until a marker lists it. In place,
        it is ``<table>.parquet`` and replaces the partition's previous file in one atomic write.
        ``data`` is a table, or a :class:`ParquetStream` already written batch by batch (uploaded
        from its local file, never held in memory).
        """
        _check_ds(ds)
        name = (
            f"{table_name}.parquet"
            if in_place
            else f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        )
        key = f"{self.partition_prefix(area, table_name, ds)}/{name}"
        if isinstance(data, ParquetStream):
            if data.table_name != table_name:
                raise StorageError(f"a stream of {data.table_name!r} cannot be written as {table_name!r}")
            return self.put_file(key, data.finish()), data.rows
        data = conform(table_name, data.drop_columns(["ds"]) if "ds" in data.column_names else data)
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        return self.put_bytes(key, buf.getvalue()), data.num_rows

    def _drop_uncommitted(self, table_name: str, *, ds: str, area: str, keep: set[str]) -> None:
        """Remove the files of earlier commits (and per-table markers superseded by a day marker)."""
        for key in self.list(self.partition_prefix(area, table_name, ds)):
            if key not in keep:
                self.delete(key)

    def _undo(self, keys: builtins.list[str]) -> None:
        """Best effort: remove the files of a commit that failed before its marker."""
        for key in keys:
            try:
                self.delete(key)
            except (StorageError, StorageUnavailable) as exc:
                log.warning("could not remove %s after a failed commit: %s", self.uri(key), exc)

    def write_table(
        self, table_name: str, data: pa.Table | ParquetStream, *, ds: str, area: str
    ) -> PartitionCommit:
        """Replace partition ``area/table_name/ds=ds`` with ``data`` (checked against its contract).

        The new file is written under a unique name, ``_SUCCESS`` then switches readers to it, and
        only then are the previous commit's files removed.
        """
        key, rows = self._write_part(table_name, data, ds=ds, area=area)
        prefix = self.partition_prefix(area, table_name, ds)
        marker = {
            "files": [key.rsplit("/", 1)[-1]],
            "rows": rows,
            "committed_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        try:
            self.put_json(f"{prefix}/{SUCCESS}", marker)
        except BaseException:
            self._undo([key])
            raise
        self._drop_uncommitted(table_name, ds=ds, area=area, keep={key, f"{prefix}/{SUCCESS}"})
        log.info("committed %s rows=%d ds=%s", prefix, rows, ds)
        return PartitionCommit(table_name, ds, area, (key,), rows)

    def write_day(
        self,
        tables: Mapping[str, pa.Table | ParquetStream],
        *,
        ds: str,
        area: str,
        meta: Mapping[str, Any] | None = None,
        in_place: bool = False,
    ) -> dict[str, PartitionCommit]:
        """Commit several tables of ``area`` for ``ds`` at once: readers see all the new ones or all the old.

        Args:
            tables: table name -> data (each checked against its contract).
            ds: the day.
            area: the area every table lives in.
            meta: JSON-able facts stored in the day marker (e.g. the validation summary).
            in_place: give each table one file of a fixed name, ``<table>.parquet``, replaced in one
                atomic write. Readers that glob the partition instead of following the marker (DuckDB,
                Spark, Athena) then see a table's old day or its new day, never both; the tables are
                replaced one after the other, so such a reader can briefly see one table new and
                another old. A failed in-place commit leaves what it replaced (there is no old copy to
                return to); the rerun completes it.
        """
        written: builtins.list[str] = []
        commits: dict[str, PartitionCommit] = {}
        try:
            for name, data in tables.items():
                key, rows = self._write_part(name, data, ds=ds, area=area, in_place=in_place)
                written.append(key)
                commits[name] = PartitionCommit(name, ds, area, (key,), rows)
            marker = {
                "tables": {
                    name: {"files": [k.rsplit("/", 1)[-1] for k in c.files], "rows": c.rows}
                    for name, c in commits.items()
                },
                "meta": dict(meta or {}),
                "committed_at": dt.datetime.now(dt.UTC).isoformat(),
            }
            self.put_json(self.day_marker(area, ds), marker)
        except BaseException:
            if not in_place:
                self._undo(written)
            raise
        for name, commit in commits.items():
            self._drop_uncommitted(name, ds=ds, area=area, keep=set(commit.files))
        log.info(
            "committed day %s/ds=%s tables=%s",
            area,
            ds,
            ", ".join(f"{n}({c.rows} rows)" for n, c in commits.items()),
        )
        return commits

    def day_commit(self, area: str, ds: str) -> dict[str, Any] | None:
        """The marker of ``area``'s day commit of ``ds`` (tables, meta), or None when there is none."""
        key = self.day_marker(area, ds)
        return self.get_json(key) if self.exists(key) else None

    def retract_day(self, area: str, ds: str) -> None:
        """Make ``area``'s day ``ds`` invisible (its marker goes first; the files follow)."""
        marker = self.day_commit(area, ds)
        self.delete(self.day_marker(area, ds))
        for name in (marker or {}).get("tables", {}):
            self.delete_prefix(self.partition_prefix(area, name, ds))

    def committed_files(self, table_name: str, *, ds: str, area: str) -> builtins.list[str]:
        """Keys of the files of a committed partition; raises if the partition was never committed."""
        prefix = self.partition_prefix(area, table_name, ds)
        day = self.day_commit(area, ds)
        if day is not None:
            entry = day.get("tables", {}).get(table_name)
            if entry is None:
                raise StorageError(f"day {area}/ds={ds} was committed without table {table_name!r}")
            return [f"{prefix}/{name}" for name in entry["files"]]
        if not self.exists(f"{prefix}/{SUCCESS}"):
            raise StorageError(f"partition {self.uri(prefix)} is not committed (no {SUCCESS})")
        marker = self.get_json(f"{prefix}/{SUCCESS}")
        if not isinstance(marker, dict) or not isinstance(marker.get("files"), builtins.list):
            raise StorageError(f"{self.uri(prefix)}/{SUCCESS} does not list the partition's files")
        return [f"{prefix}/{name}" for name in marker["files"]]

    def has_partition(self, table_name: str, *, ds: str, area: str) -> bool:
        day = self.day_commit(area, ds)
        if day is not None:
            return table_name in day.get("tables", {})
        return self.exists(f"{self.partition_prefix(area, table_name, ds)}/{SUCCESS}")

    def partitions(self, table_name: str, *, area: str) -> builtins.list[str]:
        """Committed ``ds`` values of a table, sorted."""
        found = set()
        for key in self.list(f"{area}/{table_name}"):
            parts = key.split("/")
            if parts[-1] == SUCCESS and parts[-2].startswith("ds="):
                found.add(parts[-2][3:])
        for key in self.list(f"{area}/{DAYS}"):
            parts = key.split("/")
            if parts[-1] == SUCCESS and parts[-2].startswith("ds="):
                ds = parts[-2][3:]
                if table_name in (self.day_commit(area, ds) or {}).get("tables", {}):
                    found.add(ds)
        return sorted(found)

    def read_parquet(self, key: str) -> pa.Table:
        """One Parquet object; a file that is not Parquet is a :class:`StorageError` naming it."""
        data = self.get_bytes(key)
        try:
            return pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{self.uri(key)} is not a readable Parquet file: {_one_line(exc)}") from exc

    def read_table(self, table_name: str, *, ds: str, area: str) -> pa.Table:
        """Read one committed partition, checked against its contract."""
        tables = [self.read_parquet(k) for k in self.committed_files(table_name, ds=ds, area=area)]
        return conform(table_name, pa.concat_tables(tables) if tables else pa.table({}))

    def iter_table(
        self,
        table_name: str,
        *,
        ds: str,
        area: str,
        batch_rows: int = 8192,
        columns: builtins.list[str] | None = None,
    ) -> Iterator[pa.Table]:
        """One committed partition, ``batch_rows`` rows at a time, each checked against its contract.

        Memory stays at one batch however large the partition (the manifests of a large catalog).
        With ``columns``, only those are decoded (as the files hold them; the contract is not checked).
        """
        for key in self.committed_files(table_name, ds=ds, area=area):
            with self.errors("read", key):
                source = self.fs.open_input_file(self.arrow_path(key))
            try:
                parquet = pq.ParquetFile(source)
                check = (lambda t: t.select(columns)) if columns else (lambda t: conform(table_name, t))
                if parquet.metadata.num_rows == 0:  # still one (empty) batch: readers keep the columns
                    yield check(parquet.schema_arrow.empty_table())
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                    yield check(pa.Table.from_batches([batch]))
            except pa.ArrowInvalid as exc:
                raise StorageError(
                    f"{self.uri(key)} is not a readable Parquet file: {_one_line(exc)}"
                ) from exc
            except OSError as exc:  # mid-read: the store failed (S3: retryable), as errors() decides
                with self.errors("read", key):
                    raise exc
            finally:
                source.close()

    def read_tables(self, table_name: str, *, dss: builtins.list[str], area: str) -> pa.Table:
        """Read several committed partitions into one table with a ``ds`` column appended."""
        parts = []
        for ds in dss:
            part = self.read_table(table_name, ds=ds, area=area)
            parts.append(part.append_column("ds", pa.array([ds] * part.num_rows, pa.string())))
        if not parts:
            empty = empty_table(table_name)
            return empty.append_column("ds", pa.array([], pa.string()))
        return pa.concat_tables(parts, promote_options="default")

    # ----------------------------------------------------------------- latest pointer
    def set_latest(self, area: str, table_name: str, ds: str) -> None:
        """Point readers at ``ds``; refuses a partition that is not committed."""
        self.committed_files(table_name, ds=ds, area=area)
        self.put_json(
            f"{area}/{table_name}/{LATEST}", {"ds": ds, "updated_at": dt.datetime.now(dt.UTC).isoformat()}
        )

    def get_latest(self, area: str, table_name: str) -> str | None:
        key = f"{area}/{table_name}/{LATEST}"
        return self.get_json(key)["ds"] if self.exists(key) else None


def _check_ds(ds: str) -> None:
    try:
        ok = dt.date.fromisoformat(ds).isoformat() == ds
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise StorageError(f"ds must be YYYY-MM-DD, got {ds!r}")


def _copy_into(path: str | Path, out: Any, chunk: int = 8 << 20) -> None:
    with open(path, "rb") as src:
        while block := src.read(chunk):
            out.write(block)


class ParquetStream:
    """A table written batch by batch to a local temporary Parquet file, then committed as one data file.

    For tables too large to hold in memory (a large catalog's covers manifest): the writer keeps one
    batch; :meth:`ObjectStore.write_table` and :meth:`ObjectStore.write_day` upload the file. Use it as
    a context manager, so the temporary file is removed however the write ends.

    Args:
        table_name: the contract each batch is checked against (:func:`icg_core.data.schemas.conform`).
    """

    def __init__(self, table_name: str) -> None:
        self.table_name = table_name
        self.rows = 0
        handle, self.path = tempfile.mkstemp(prefix=f"icg-{table_name}-", suffix=".parquet")
        os.close(handle)
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.Table) -> None:
        """Append ``batch`` (checked against the contract; a ``ds`` column is dropped: it is the partition key)."""
        if "ds" in batch.column_names:
            batch = batch.drop_columns(["ds"])
        batch = conform(self.table_name, batch)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, batch.schema, compression="zstd")
        self._writer.write_table(batch)
        self.rows += batch.num_rows

    def finish(self) -> str:
        """Close the file (an empty table of the contract if nothing was written); returns its path."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, conform(self.table_name, empty_table(self.table_name)).schema
            )
        self._writer.close()
        return self.path

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, *_: object) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
