"""Object storage over one root URI: ``file://`` (default) or ``s3://bucket/prefix``.

One implementation for both backends, on :mod:`pyarrow.fs`, so the code that runs on a laptop is the
code that runs against S3. Layout under the root (docs/architecture.md, "Data contracts and object layout")::

    raw/<table>/ds=YYYY-MM-DD/part-<run>.parquet      platform dumps (or the simulator / importers)
    staging/extract/<table>/ds=.../                    extraction candidates, not yet validated
    validated/<table>/ds=.../                          tables every suite passed on
    features/ models/<name>/<version>/ covers/ manifests/ reports/

Partition commits are atomic for readers. A partition's data files get unique names; the commit then
writes ``_SUCCESS`` (one object, a JSON list of the partition's files) and only afterwards deletes
files of earlier commits. Readers read exactly the files ``_SUCCESS`` lists, so a rerun never shows
half a day, and a partition without ``_SUCCESS`` does not exist for them. A table's ``_latest`` object
names its newest published ``ds``; it moves only after that partition is committed.
"""

from __future__ import annotations

import builtins
import datetime as dt
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import botocore.exceptions
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from icg_core.config import StorageConfig
from icg_core.data.schemas import conform

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LATEST = "_latest"


class StorageError(RuntimeError):
    """A storage operation failed (unreachable root, missing object, unwritable location)."""


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
    """

    def __init__(
        self, root: str, *, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1"
    ) -> None:
        self.root = normalize_root(root)
        self.s3_endpoint_url = (
            s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.s3_region = s3_region
        parsed = urlparse(self.root)
        self.scheme = parsed.scheme
        self._client: Any = None  # boto3 S3 client, created on first write
        if self.scheme == "file":
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self._base = parsed.path
            self._real_base = os.path.realpath(self._base)  # where every local key must resolve
        else:
            endpoint = urlparse(self.s3_endpoint_url) if self.s3_endpoint_url else None
            self.fs = pafs.S3FileSystem(
                region=s3_region,
                endpoint_override=endpoint.netloc if endpoint else None,
                scheme=endpoint.scheme if endpoint else "https",
                allow_bucket_creation=False,
            )
            self._base = (parsed.netloc + parsed.path).rstrip("/")

    @classmethod
    def from_config(cls, storage: StorageConfig, root: str | None = None) -> ObjectStore:
        return cls(root or storage.root, s3_endpoint_url=storage.s3_endpoint_url, s3_region=storage.s3_region)

    def __getstate__(self) -> dict[str, Any]:
        # Stores travel to Ray workers; a boto3 client does not pickle, so each process makes its own.
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"ObjectStore({self.root!r})"

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

    def arrow_path(self, key: str) -> str:
        """``key`` as a path on :attr:`fs` (``bucket/key`` on S3, absolute locally), for pyarrow readers."""
        return self._path(key)

    def uri(self, key: str) -> str:
        """The absolute URI of ``key`` (what tables store, e.g. ``reference_image_uri``)."""
        return f"{self.root}/{key.lstrip('/')}"

    def key(self, uri: str) -> str:
        """The key of an absolute URI under this root."""
        prefix = self.root + "/"
        if not uri.startswith(prefix):
            raise StorageError(f"URI {uri!r} is not under this store's root {self.root!r}")
        return uri[len(prefix) :]

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
    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def size(self, key: str) -> int:
        info = self.fs.get_file_info(self._path(key))
        if info.type != pafs.FileType.File:
            raise StorageError(f"no object at {self.uri(key)}")
        return int(info.size)

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write one object atomically (readers see the old or the new object, never a part). Returns its URI."""
        path = self._path(key)
        try:
            if self.scheme == "file":
                self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                self.fs.move(tmp, path)  # rename(2): atomic on one filesystem
            else:
                # One PutObject is atomic on S3. boto3 rather than pyarrow's stream writer, which always
                # uses a multipart upload that some S3-compatible servers reject for small objects.
                bucket, _, object_key = path.partition("/")
                self._s3_client().put_object(Bucket=bucket, Key=object_key, Body=data)
        except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        return self.uri(key)

    def _s3_client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.s3_endpoint_url, region_name=self.s3_region)
        return self._client

    def get_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(key)) as src:
                return src.read()
        except (FileNotFoundError, OSError) as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc

    def read_uri(self, uri: str, max_bytes: int | None = None) -> bytes:
        """Read an object by absolute URI (must be under this root). Refuses objects over ``max_bytes``."""
        key = self.key(uri)
        if max_bytes is not None and self.size(key) > max_bytes:
            raise StorageError(f"{uri} is larger than {max_bytes} bytes")
        return self.get_bytes(key)

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key).decode("utf-8"))

    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under ``prefix`` (recursive, sorted); empty if there are none."""
        base = self._path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except FileNotFoundError:
            return []
        cut = len(self._base) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass

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

    def write_table(self, table_name: str, data: pa.Table, *, ds: str, area: str) -> PartitionCommit:
        """Replace partition ``area/table_name/ds=ds`` with ``data`` (checked against its contract).

        The new file is written under a unique name, ``_SUCCESS`` then switches readers to it, and
        only then are the previous commit's files removed.
        """
        _check_ds(ds)
        if "ds" in data.column_names:
            data = data.drop_columns(["ds"])
        data = conform(table_name, data)
        prefix = self.partition_prefix(area, table_name, ds)
        name = f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        self.put_bytes(f"{prefix}/{name}", buf.getvalue())
        marker = {"files": [name], "rows": data.num_rows, "committed_at": dt.datetime.now(dt.UTC).isoformat()}
        self.put_json(f"{prefix}/{SUCCESS}", marker)
        for key in self.list(prefix):
            leaf = key.rsplit("/", 1)[-1]
            if leaf not in (SUCCESS, name):
                self.delete(key)
        log.info("committed %s rows=%d ds=%s", prefix, data.num_rows, ds)
        return PartitionCommit(table_name, ds, area, (f"{prefix}/{name}",), data.num_rows)

    def committed_files(self, table_name: str, *, ds: str, area: str) -> builtins.list[str]:
        """Keys of the files of a committed partition; raises if the partition was never committed."""
        prefix = self.partition_prefix(area, table_name, ds)
        if not self.exists(f"{prefix}/{SUCCESS}"):
            raise StorageError(f"partition {self.uri(prefix)} is not committed (no {SUCCESS})")
        return [f"{prefix}/{name}" for name in self.get_json(f"{prefix}/{SUCCESS}")["files"]]

    def has_partition(self, table_name: str, *, ds: str, area: str) -> bool:
        return self.exists(f"{self.partition_prefix(area, table_name, ds)}/{SUCCESS}")

    def partitions(self, table_name: str, *, area: str) -> builtins.list[str]:
        """Committed ``ds`` values of a table, sorted."""
        found = set()
        for key in self.list(f"{area}/{table_name}"):
            parts = key.split("/")
            if parts[-1] == SUCCESS and parts[-2].startswith("ds="):
                found.add(parts[-2][3:])
        return sorted(found)

    def read_table(self, table_name: str, *, ds: str, area: str) -> pa.Table:
        """Read one committed partition, checked against its contract."""
        tables = [
            pq.read_table(self.fs.open_input_file(self.arrow_path(k)))
            for k in self.committed_files(table_name, ds=ds, area=area)
        ]
        return conform(table_name, pa.concat_tables(tables) if tables else pa.table({}))

    def read_tables(self, table_name: str, *, dss: builtins.list[str], area: str) -> pa.Table:
        """Read several committed partitions into one table with a ``ds`` column appended."""
        parts = []
        for ds in dss:
            part = self.read_table(table_name, ds=ds, area=area)
            parts.append(part.append_column("ds", pa.array([ds] * part.num_rows, pa.string())))
        if not parts:
            from icg_core.data.schemas import empty_table

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
