"""Where everything lives under the object root: the only module that spells an area, a table or a key.

docs/architecture.md, "Data contracts and object layout". Stages read and write through the
:class:`Table` handles and key functions here; a test fails when any other module spells an area or
a key, so moving an object means editing this file alone. The commit protocol itself (``_SUCCESS``
markers, ``_latest`` pointers of tables) belongs to :mod:`icg_core.storage`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pyarrow as pa

from icg_core.storage import LATEST, SUCCESS, ObjectStore, PartitionCommit, StorageError

# ---------------------------------------------------------------------------- areas
RAW = "raw"  # platform dumps, or the simulator / importers
STAGING_EXTRACT = "staging/extract"  # extraction candidates, not yet validated
VALIDATED = "validated"  # tables every suite passed on
USERS = "users"  # user embeddings, segments and centroids
FEATURES = "features"  # per-item meta-token features and the day's item_features table
MODELS = "models"  # models/<name>/<version>/ checkpoints and model folders
COVERS = "covers"  # cover images and sidecars: covers/ds=.../segment=.../<item>.png
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

    def read_days(self, store: ObjectStore, dss: list[str]) -> pa.Table:
        """Several days in one table, with a ``ds`` column."""
        return store.read_tables(self.name, dss=dss, area=self.area)

    def write(self, store: ObjectStore, data: pa.Table, ds: str) -> PartitionCommit:
        return store.write_table(self.name, data, ds=ds, area=self.area)

    def drop(self, store: ObjectStore, ds: str) -> None:
        store.delete_prefix(self.prefix(ds))

    def latest(self, store: ObjectStore) -> str | None:
        """The day the table's ``_latest`` pointer names (None before the first)."""
        return store.get_latest(self.area, self.name)

    def set_latest(self, store: ObjectStore, ds: str) -> None:
        store.set_latest(self.area, self.name, ds)

    def root_uri(self, store: ObjectStore) -> str:
        return store.uri(f"{self.area}/{self.name}")


def raw_table(name: str) -> Table:
    return Table(RAW, name)


def staged_table(name: str) -> Table:
    """An extracted, not yet validated, table."""
    return Table(STAGING_EXTRACT, name)


def validated_table(name: str) -> Table:
    return Table(VALIDATED, name)


RAW_CATALOG = raw_table("catalog_items")
RAW_IMPRESSIONS = raw_table("impressions")
CATALOG = validated_table("catalog_items")
IMPRESSIONS = validated_table("impressions")
USER_EMBEDDINGS = Table(USERS, "user_embeddings")
USER_SEGMENTS = Table(USERS, "user_segments")
SEGMENT_CENTROIDS = Table(USERS, "segment_centroids")
ITEM_FEATURES = Table(FEATURES, "item_features")
STAGED_COVERS = Table(STAGING_COVERS, "covers")  # generate's manifest
PUBLISHED_COVERS = Table(MANIFESTS, "covers")  # the downstream contract


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


def cover(ds: str, segment_id: int, item_id: str) -> str:
    """A generated cover image."""
    return f"{COVERS}/ds={ds}/segment={int(segment_id)}/{item_id}.png"


def cover_sidecar(ds: str, segment_id: int, item_id: str) -> str:
    """The JSON beside a cover: its fingerprint and rewards."""
    return f"{COVERS}/ds={ds}/segment={int(segment_id)}/{item_id}.json"


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
