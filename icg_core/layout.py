"""Where everything lives under the object root: the only module that spells an area, a table or a key.

docs/architecture.md, "Data contracts and object layout". Stages read and write through the
:class:`Table` handles and key functions here; a test fails when any other module spells an area or
a key, so moving an object means editing this file alone. The commit protocol itself (``_SUCCESS``
markers, ``_latest`` pointers of tables) belongs to :mod:`icg_core.storage`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from icg_core.storage import LATEST, SUCCESS, ObjectStore, ParquetStream, PartitionCommit, StorageError

# ---------------------------------------------------------------------------- areas
RAW = "raw"  # platform dumps, or the simulator / importers
STAGING_EXTRACT = "staging/extract"  # extraction candidates, not yet validated
VALIDATED = "validated"  # tables every suite passed on
USERS = "users"  # user embeddings, segments and centroids
FEATURES = "features"  # per-item meta-token features and the day's item_features table
MODELS = "models"  # models/<name>/<version>/ checkpoints and model folders
COVERS = "covers"  # cover images and sidecars: covers/ds=.../segment=.../<item>-<digest>.png
STAGING_COVERS = "staging/covers"  # the generate stage's manifest, waiting for publish
MANIFESTS = "manifests"  # what downstream readers read
REPORTS = "reports"  # metrics, reports, validation results, training logs
ORACLE = "oracle"  # the embedded world's hidden truth: read by evaluation only
FAULTS = "_faults"  # test-only fault-injection markers


# ---------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    """One Hive-partitioned table under an area: ``<area>/<name>/ds=<ds>/``."""

    area: str
    name: str

    def prefix(self, ds: str) -> str:
        return ObjectStore.partition_prefix(self.area, self.name, ds)

    def uri(self, store: ObjectStore, ds: str) -> str:
        return store.uri(self.prefix(ds))

    def exists(self, store: ObjectStore, ds: str) -> bool:
        return store.has_partition(self.name, ds=ds, area=self.area)

    def days(self, store: ObjectStore) -> list[str]:
        """Committed days, sorted."""
        return store.partitions(self.name, area=self.area)

    def files(self, store: ObjectStore, ds: str) -> list[str]:
        """Keys of a committed partition's files."""
        return store.committed_files(self.name, ds=ds, area=self.area)

    def read(self, store: ObjectStore, ds: str) -> pa.Table:
        return store.read_table(self.name, ds=ds, area=self.area)

    def iter_batches(
        self, store: ObjectStore, ds: str, batch_rows: int = 8192, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """The committed day ``batch_rows`` rows at a time (memory: one batch; see :meth:`ObjectStore.iter_table`)."""
        return store.iter_table(self.name, ds=ds, area=self.area, batch_rows=batch_rows, columns=columns)

    def read_columns(self, store: ObjectStore, ds: str, columns: list[str]) -> pa.Table:
        """Only ``columns`` of the committed day (the others are never decoded)."""
        return pa.concat_tables(self.iter_batches(store, ds, columns=columns))

    def read_days(self, store: ObjectStore, dss: list[str]) -> pa.Table:
        """Several days in one table, with a ``ds`` column."""
        return store.read_tables(self.name, dss=dss, area=self.area)

    def write(self, store: ObjectStore, data: pa.Table | ParquetStream, ds: str) -> PartitionCommit:
        return store.write_table(self.name, data, ds=ds, area=self.area)

    def drop(self, store: ObjectStore, ds: str) -> None:
        store.delete_prefix(self.prefix(ds))

    def latest(self, store: ObjectStore) -> str | None:
        """The day the table's ``_latest`` pointer names (None before the first)."""
        return store.get_latest(self.area, self.name)

    def set_latest(self, store: ObjectStore, ds: str) -> None:
        store.set_latest(self.area, self.name, ds)

    def root_key(self) -> str:
        """The prefix holding every partition of the table."""
        return f"{self.area}/{self.name}"

    def root_uri(self, store: ObjectStore) -> str:
        return store.uri(self.root_key())


@dataclass(frozen=True)
class Day:
    """The tables of an area that change together, committed as one day (``<area>/_days/ds=<ds>/``).

    Readers of the area's tables follow the day marker, so they see every table of the new day or
    every table of the old one, never a mix.
    """

    area: str
    in_place: bool = False  # one fixed-name file per table, for readers that glob (ObjectStore.write_day)

    def write(
        self,
        store: ObjectStore,
        tables: Mapping[str, pa.Table | ParquetStream],
        ds: str,
        meta: Mapping[str, Any],
    ) -> dict[str, PartitionCommit]:
        return store.write_day(tables, ds=ds, area=self.area, meta=meta, in_place=self.in_place)

    def meta(self, store: ObjectStore, ds: str) -> dict[str, Any] | None:
        """The facts stored with the day's commit; None when the day is not committed."""
        marker = store.day_commit(self.area, ds)
        return None if marker is None else dict(marker.get("meta", {}))

    def retract(self, store: ObjectStore, ds: str) -> None:
        """Make the day invisible to readers, then delete its files."""
        store.retract_day(self.area, ds)


def partition_day(key: str) -> str:
    """The ``ds`` of the partition a key lies in (``raw/impressions/ds=2026-11-03/part.parquet`` -> ``2026-11-03``)."""
    found = re.search(r"/ds=(\d{4}-\d{2}-\d{2})/", key)
    if found is None:
        raise StorageError(f"{key!r} is not in a ds= partition")
    return found.group(1)


def raw_table(name: str) -> Table:
    return Table(RAW, name)


def staged_table(name: str) -> Table:
    """An extracted, not yet validated, table."""
    return Table(STAGING_EXTRACT, name)


def validated_table(name: str) -> Table:
    return Table(VALIDATED, name)


STAGED_DAY = Day(STAGING_EXTRACT)  # extract's catalog snapshot + impressions window, as one commit
VALIDATED_DAY = Day(VALIDATED)  # what validate promoted: both tables and the validation summary
RAW_CATALOG = raw_table("catalog_items")
RAW_IMPRESSIONS = raw_table("impressions")
CATALOG = validated_table("catalog_items")
IMPRESSIONS = validated_table("impressions")
USER_EMBEDDINGS = Table(USERS, "user_embeddings")
USER_SEGMENTS = Table(USERS, "user_segments")
SEGMENT_CENTROIDS = Table(USERS, "segment_centroids")
ITEM_FEATURES = Table(FEATURES, "item_features")
STAGED_COVERS = Table(STAGING_COVERS, "covers")  # generate's manifest
# The downstream contract (docs/consumers.md): the two tables below, each one file per day.
PUBLISHED_DAY = Day(MANIFESTS, in_place=True)
PUBLISHED_COVERS = Table(MANIFESTS, "covers")  # a cover per (item, segment)
PUBLISHED_USER_SEGMENTS = Table(MANIFESTS, "user_segments")  # each user's segment that day


# Tables whose columns name objects (icg_core.data.schemas.OBJECT_COLUMNS), in every area they live in.
OBJECT_TABLES = (
    RAW_CATALOG,
    RAW_IMPRESSIONS,
    staged_table("catalog_items"),
    staged_table("impressions"),
    CATALOG,
    IMPRESSIONS,
    ITEM_FEATURES,
    STAGED_COVERS,
    PUBLISHED_COVERS,
)
DAYS = {day.area: day for day in (STAGED_DAY, VALIDATED_DAY, PUBLISHED_DAY)}  # areas committed as days
_OBJECT_AREAS = (RAW, COVERS, FEATURES)  # where the objects tables point to live


def key_in_moved_root(uri: str) -> str:
    """The key an absolute URI written under *another* root names (``.../old-root/raw/x.png`` -> ``raw/x.png``).

    Object keys start with one of the object areas and never contain one again (ids have no ``/``), so
    the last ``/<area>/`` in the URI is where the old root ended.

    Raises:
        StorageError: the URI names no object area.
    """
    cut = max(uri.rfind(f"/{area}/") for area in _OBJECT_AREAS)
    if cut < 0:
        raise StorageError(f"{uri!r} names no object under {', '.join(_OBJECT_AREAS)}/")
    return uri[cut + 1 :]


# ---------------------------------------------------------------------------- images
def reference_image(item_id: str, extension: str = "png") -> str:
    """An item's reference image as the simulator and importers store it."""
    return f"{RAW}/images/reference/{item_id}.{extension}"


def reference_images() -> str:
    return f"{RAW}/images/reference"


def variant_image(item_id: str, index: int) -> str:
    """One of an item's logged cover variants (embedded world)."""
    return f"{RAW}/images/variants/{item_id}/{index}.png"


def variant_images() -> str:
    return f"{RAW}/images/variants"


def cover(ds: str, segment_id: int, item_id: str, digest: str) -> str:
    """A generated cover image, addressed by its content (``digest`` of the PNG bytes).

    A rerun that draws a different image writes a new key, so an image a published manifest points
    to is never overwritten.
    """
    return f"{COVERS}/ds={ds}/segment={int(segment_id)}/{item_id}-{digest}.png"


def legacy_cover(ds: str, segment_id: int, item_id: str) -> str:
    """Where covers lived before content addressing (still read by generate's reuse)."""
    return f"{COVERS}/ds={ds}/segment={int(segment_id)}/{item_id}.png"


def cover_sidecar(ds: str, segment_id: int, item_id: str) -> str:
    """The JSON beside a cover: its fingerprint and rewards."""
    return f"{COVERS}/ds={ds}/segment={int(segment_id)}/{item_id}.json"


def cover_plan(ds: str) -> str:
    """What the covers of ``ds`` were drawn with (generator, sampling digest): the next night's refresh reads it."""
    return f"{STAGING_COVERS}/_plans/ds={ds}.json"


def is_cover(key: str) -> bool:
    """Whether ``key`` names an object in the covers area."""
    return key.startswith(f"{COVERS}/")


def covers_root() -> str:
    return f"{COVERS}/"


def feature_cache(encoder_version: str) -> str:
    """The prefix of one encoder version's cached features."""
    return f"{FEATURES}/{encoder_version}"


def feature(encoder_version: str, item_hash: str) -> str:
    """One item's cached meta-token features."""
    return f"{FEATURES}/{encoder_version}/{item_hash}.safetensors"


# ---------------------------------------------------------------------------- models
def model(name: str, version: str) -> str:
    """The key prefix of one model version: ``models/<name>/<version>``."""
    for part in (name, version):
        if not part or "/" in part or part.startswith(("_", ".")):
            raise StorageError(f"invalid model name/version part {part!r}")
    return f"{MODELS}/{name}/{version}"


def model_file(name: str, version: str, relative: str) -> str:
    """A file inside one model version's folder."""
    return f"{model(name, version)}/{relative}"


def model_marker(name: str, version: str) -> str:
    """The ``_SUCCESS`` marker written last: a version without it is incomplete."""
    return model_file(name, version, SUCCESS)


def model_config(name: str, version: str) -> str:
    return model_file(name, version, "config.json")


def model_versions(name: str) -> str:
    """The prefix holding every version of a model."""
    return f"{MODELS}/{name}"


def model_versions_stored(store: ObjectStore, name: str, *, complete: bool = True) -> list[str]:
    """Versions of a model under ``models/<name>/``, sorted; only those with a ``_SUCCESS`` marker by default."""
    found = set()
    for key in store.list(model_versions(name)):
        parts = key.split("/")
        if len(parts) == 4 and (not complete or parts[3] == SUCCESS):
            found.add(parts[2])
    return sorted(found)


def _latest_model(name: str) -> str:
    return f"{MODELS}/{name}/{LATEST}"


def set_latest(store: ObjectStore, name: str, version: str) -> None:
    """Point ``models/<name>/_latest`` at ``version``: the one way a model's production version moves."""
    store.put_json(
        _latest_model(name), {"version": version, "updated_at": dt.datetime.now(dt.UTC).isoformat()}
    )


def latest_version(store: ObjectStore, name: str) -> str | None:
    """The version ``models/<name>/_latest`` names (None when the model was never saved)."""
    key = _latest_model(name)
    return str(store.get_json(key)["version"]) if store.exists(key) else None


def latest_pointer_uri(store: ObjectStore, name: str) -> str:
    return store.uri(_latest_model(name))


def _challenger_model(name: str) -> str:
    return f"{MODELS}/{name}/_challenger"


def set_challenger(store: ObjectStore, name: str, version: str, ds: str) -> None:
    """Name ``version`` the challenger of ``ds``: the evaluation decides whether it replaces ``_latest``."""
    store.put_json(
        _challenger_model(name),
        {"version": version, "ds": ds, "updated_at": dt.datetime.now(dt.UTC).isoformat()},
    )


def challenger(store: ObjectStore, name: str) -> dict[str, str] | None:
    """``{"version", "ds"}`` of the newest challenger of ``name`` (None before the first fine-tune)."""
    key = _challenger_model(name)
    return dict(store.get_json(key)) if store.exists(key) else None


def promotion_records(name: str) -> str:
    """The prefix of a generator's promotion events."""
    return f"{MODELS}/{name}/_promotions"


def promotion_record(name: str, ds: str, version: str) -> str:
    """One promotion event: the evaluation of ``ds`` made ``version`` the champion."""
    return f"{promotion_records(name)}/ds={ds}/{version}.json"


# ---------------------------------------------------------------------------- reports
def reports(ds: str) -> str:
    """The prefix of one day's reports."""
    return f"{REPORTS}/ds={ds}"


def report(ds: str, filename: str) -> str:
    """A file of one day's reports (``index.html``, ``ablations.json``, plots, ...)."""
    return f"{reports(ds)}/{filename}"


def metrics(ds: str) -> str:
    """The evaluate stage's metrics of ``ds`` (the gates' and the report's input)."""
    return report(ds, "metrics.json")


def report_page(ds: str) -> str:
    return report(ds, "index.html")


def validation_report(ds: str) -> str:
    """Great-expectations' result JSON plus our per-row findings."""
    return report(ds, "validation.json")


def evaluation_cover(ds: str, variant: str, filename: str) -> str:
    """A cover the evaluate stage sampled for the report's contact sheets."""
    return report(ds, f"covers/{variant}/{filename}")


def finetune_log(ds: str, generator_version: str) -> str:
    """A fine-tuning run's summary with its reward curves."""
    return report(ds, f"finetune-{generator_version}.json")


_FINETUNE_LOG = re.compile(rf"{REPORTS}/ds=(\d{{4}}-\d{{2}}-\d{{2}})/finetune-([^/]+)\.json")


def finetune_logs(store: ObjectStore) -> list[tuple[str, str, str]]:
    """Every fine-tuning log as (ds, generator version, key), sorted by day."""
    found = (_FINETUNE_LOG.fullmatch(key) for key in store.list(REPORTS))
    return sorted((m.group(1), m.group(2), m.group(0)) for m in found if m)


def bootstrap_report(filename: str) -> str:
    """A file of the one-time bootstrap's report (summary, contact sheets)."""
    return f"{REPORTS}/bootstrap/{filename}"


# ---------------------------------------------------------------------------- the rest
def oracle(filename: str) -> str:
    """A file of the embedded world's oracle (evaluation only)."""
    return f"{ORACLE}/{filename}"


def oracle_root() -> str:
    return ORACLE


def fault_markers(ds: str) -> str:
    """Test-only: the prefix of generate's injected-crash markers of ``ds``."""
    return f"{FAULTS}/generate/ds={ds}"


def fault_marker(ds: str, pid: int) -> str:
    """Test-only: one marker per injected crash."""
    return f"{fault_markers(ds)}/pid={pid}.json"
