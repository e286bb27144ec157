"""Real-dataset importers: MovieLens and PixelRec into the same raw tables the simulator writes.

Both importers end in one shared path (:func:`_write_raw`): reference images are checked with Pillow
and copied into the store under ``raw/images/reference/<item_id>.<ext>``, items without a usable image
are skipped (and their interactions dropped, both reported), impressions are written as one
``raw/impressions/ds=YYYY-MM-DD`` partition per UTC day of ``shown_at``, and the catalog is written as
one ``raw/catalog_items`` partition at the ds of the earliest kept impression, with ``updated_at`` at
the start of that UTC day, so the catalog snapshot as of any ds in the logs contains every item.

Rerunning an import into the same root replaces the same partitions and image objects: the raw tables
end up identical. Partitions of days the new input no longer covers are left alone (the root may hold
other producers' days).
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from icg_core import layout
from icg_core.config import ValidationConfig
from icg_core.data.images import check_image_bytes
from icg_core.data.schemas import MAX_ID_CHARS, SAFE_ID_PATTERN, TIMESTAMP
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # earlier wins when an item has several files
SAMPLE_IDS = 10  # skipped ids listed in the summary, per reason
UNKNOWN_CATEGORY = "unknown"
SECONDS_PER_DAY = 86_400
# Timestamps outside [1970, 2100) are unix milliseconds or garbage, not unix seconds.
_MAX_UNIX_SECONDS = 4_102_444_800
_COPY_WORKERS = 8  # image copy is I/O bound (file read, store write); Pillow decodes without the GIL
_PIL_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}

MOVIELENS_POSTER_DIRS = ("posters",)
MOVIELENS_NO_GENRES = "(no genres listed)"
# PixelRec's public release (github.com/westlake-repl/PixelRec): an "Interaction" download (folder
# pixelrec_interaction/) and an "Item Information" download (folder pixelrec_iteminfo/), each holding one
# CSV per subset under the same name (Pixel200K.csv, Pixel1M.csv, Pixel8M.csv, PixelRec.csv), and a
# "cover" folder of <item_id>.jpg. Folder names are matched ignoring case, spaces and underscores.
PIXELREC_INTERACTION_FILES = ("interactions.csv", "interaction.csv")
PIXELREC_INTERACTION_DIRS = ("pixelrecinteraction", "interaction", "interactions")
PIXELREC_ITEM_FILES = ("item_info.csv", "items.csv")
PIXELREC_ITEM_DIRS = (
    "pixelreciteminfo",
    "iteminfo",
    "iteminformation",
    "iteminfomation",
    "items",
    "information",
)
PIXELREC_COVER_DIRS = ("cover", "covers", "images")
PIXELREC_CATEGORY_COLUMNS = ("category", "tag", "tags")  # first present wins
_TAG_SEPARATORS = r"[,|;，]"


@dataclass
class ImportSummary:
    """What an import wrote and what it left out.

    Attributes:
        source: "movielens" or "pixelrec".
        items_imported: catalog rows written (items with a decodable image).
        items_skipped_no_image: items without an image file.
        items_skipped_bad_image: items whose image validate would refuse (format, bytes, pixels,
            decoding) or that links outside the image folder.
        sample_no_image_ids: up to ``SAMPLE_IDS`` ids of items skipped for a missing image.
        sample_bad_image_ids: up to ``SAMPLE_IDS`` ids of items skipped for a bad image.
        impressions: impression rows written.
        clicks: impressions with ``clicked`` true.
        interactions_dropped: input interactions not written (item skipped or not in the item file).
        catalog_ds: the partition the catalog was written to.
        days: impression partitions written, sorted.
    """

    source: str
    items_imported: int
    items_skipped_no_image: int
    items_skipped_bad_image: int
    sample_no_image_ids: list[str] = field(default_factory=list)
    sample_bad_image_ids: list[str] = field(default_factory=list)
    impressions: int = 0
    clicks: int = 0
    interactions_dropped: int = 0
    catalog_ds: str = ""
    days: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- MovieLens
def import_movielens(
    path: Path, store: ObjectStore, *, click_threshold: float = 4.0, limits: ValidationConfig | None = None
) -> ImportSummary:
    """Import a MovieLens release (``ml-latest-small``, ``ml-25m``, ... CSV layout) into ``raw``.

    Expected under ``path``: ``movies.csv`` (movieId,title,genres; genres pipe-separated),
    ``ratings.csv`` (userId,movieId,rating,timestamp; unix seconds), and a ``posters/`` folder with
    ``<movieId>.jpg`` (``.jpeg``/``.png``/``.webp`` also accepted). MovieLens ships no posters: the
    folder is gathered separately (e.g. from TMDB via ``links.csv``). The older ``.dat`` releases
    (ml-1m, ml-10m) are not read.

    Mapping: ``item_id`` = movieId, ``category`` = first genre ("(no genres listed)" -> "unknown"),
    ``tags`` = all genres, ``reference_image_uri`` = the copied poster. Each rating is an impression
    of the poster at the rating's time, clicked when ``rating >= click_threshold``.

    Args:
        path: directory of the unpacked release.
        store: object store to write ``raw/catalog_items``, ``raw/impressions`` and images into.
        click_threshold: ratings at or above it count as clicks (MovieLens stars, 0.5-5.0).
        limits: validate's image limits; an image outside them skips its item.

    Raises:
        ValueError: a required file or column is missing, a value is unreadable, or nothing is left
            to import (no movie with a decodable poster, or no rating of one).
    """
    path = Path(path)
    movies_csv, ratings_csv = path / "movies.csv", path / "ratings.csv"
    movies = _read_csv(movies_csv, ["movieId", "title", "genres"], id_columns=["movieId", "title", "genres"])
    ratings = _read_csv(
        ratings_csv, ["userId", "movieId", "rating", "timestamp"], id_columns=["userId", "movieId"]
    )
    posters_dir = _find_dir(path, MOVIELENS_POSTER_DIRS)
    if posters_dir is None:
        raise ValueError(
            f"{path}: no posters folder ({'/ or '.join(MOVIELENS_POSTER_DIRS)}/ with <movieId>.jpg); "
            "MovieLens ships no images and every catalog item needs a reference image"
        )

    genres = movies["genres"].fillna(MOVIELENS_NO_GENRES).str.split("|", regex=False)
    tags = genres.map(lambda g: [x for x in g if x and x != MOVIELENS_NO_GENRES])
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"],
            "title": movies["title"],
            "category": tags.map(lambda t: t[0] if t else UNKNOWN_CATEGORY),
            "tags": tags,
        }
    )
    rating = _numeric(ratings["rating"], ratings_csv, "rating")
    interactions = pd.DataFrame(
        {
            "user_id": ratings["userId"],
            "item_id": ratings["movieId"],
            "ts": _unix_seconds(ratings["timestamp"], ratings_csv, "timestamp"),
            "clicked": (rating >= click_threshold).to_numpy(),
        }
    )
    return _write_raw(
        "movielens", store, items, interactions, posters_dir, items_file=movies_csv, limits=limits
    )


# ----------------------------------------------------------------------------- PixelRec
def import_pixelrec(
    path: Path, store: ObjectStore, *, subset: str | None = None, limits: ValidationConfig | None = None
) -> ImportSummary:
    """Import a PixelRec release (github.com/westlake-repl/PixelRec) into ``raw``.

    Accepted layouts under ``path``:

    - the public downloads side by side: ``pixelrec_interaction/<Subset>.csv`` (the "Interaction"
      download; ``interaction/`` and ``interactions/`` also accepted), ``pixelrec_iteminfo/<Subset>.csv``
      (the "Item Information" download; ``item_info/``, ``items/``, ``information/`` also accepted) and
      ``cover/<item_id>.jpg`` (``covers/``, ``images/`` also accepted). ``<Subset>`` is Pixel200K,
      Pixel1M, Pixel8M or PixelRec; the item file is the one named like the interaction file;
    - flat: ``interactions.csv``, ``item_info.csv`` (the name of the repository's Pixel200K item file)
      and one of the cover folders.

    Interactions: ``item_id,user_id,timestamp`` (unix seconds). Items: ``item_id`` and ``title`` (or
    ``title_en``), optional ``description``, and a ``category``, ``tag`` or ``tags`` column mapped to
    ``category`` (first of comma/pipe-separated values; "unknown" when absent) and to ``tags``.

    PixelRec logs only positive interactions (a user clicked a cover); there are no logged non-clicks.
    Every interaction becomes an impression with ``clicked=True``, so CTR-style numbers on PixelRec
    need sampled negatives downstream.

    Args:
        path: directory holding the layout above.
        store: object store to write ``raw/catalog_items``, ``raw/impressions`` and images into.
        subset: which ``<Subset>.csv`` to read when the interaction folder holds several.
        limits: validate's image limits; an image outside them skips its item.

    Raises:
        ValueError: a required file or column is missing or ambiguous, a value is unreadable, or
            nothing is left to import.
    """
    path = Path(path)
    interactions_csv = _find_pixelrec_csv(
        path, PIXELREC_INTERACTION_FILES, PIXELREC_INTERACTION_DIRS, subset, "interaction CSV"
    )
    items_csv = _find_pixelrec_csv(
        path, PIXELREC_ITEM_FILES, PIXELREC_ITEM_DIRS, subset or interactions_csv.stem, "item_info CSV"
    )
    covers_dir = _find_dir(path, PIXELREC_COVER_DIRS)
    if covers_dir is None:
        raise ValueError(f"{path}: no cover folder ({', '.join(PIXELREC_COVER_DIRS)}) with <item_id>.jpg")

    raw_interactions = _read_csv(
        interactions_csv, ["item_id", "user_id", "timestamp"], id_columns=["item_id", "user_id"]
    )
    header = _csv_header(items_csv)
    title_column = "title" if "title" in header else "title_en" if "title_en" in header else "title"
    category_column = next((c for c in PIXELREC_CATEGORY_COLUMNS if c in header), None)
    optional = [c for c in (category_column, "description") if c is not None and c in header]
    raw_items = _read_csv(
        items_csv,
        ["item_id", title_column],
        optional=optional,
        id_columns=["item_id", title_column, *optional],
    )

    tags = _pixelrec_tags(raw_items, category_column)
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": raw_items[title_column],
            "category": tags.map(lambda t: t[0] if t else UNKNOWN_CATEGORY),
            "tags": tags,
        }
    )
    if "description" in raw_items.columns:
        items["description"] = raw_items["description"]
    interactions = pd.DataFrame(
        {
            "user_id": raw_interactions["user_id"],
            "item_id": raw_interactions["item_id"],
            "ts": _unix_seconds(raw_interactions["timestamp"], interactions_csv, "timestamp"),
            "clicked": np.ones(len(raw_interactions), dtype=bool),
        }
    )
    return _write_raw("pixelrec", store, items, interactions, covers_dir, items_file=items_csv, limits=limits)


def _pixelrec_tags(raw_items: pd.DataFrame, category_column: str | None) -> pd.Series:
    """Each item's tags: the category column split on commas/pipes; empty lists without one."""
    if category_column is None:
        return pd.Series([[] for _ in range(len(raw_items))], index=raw_items.index, dtype=object)
    tags = raw_items[category_column].fillna("").str.split(_TAG_SEPARATORS, regex=True)
    return tags.map(lambda parts: [p.strip() for p in parts if p.strip()])


def _find_pixelrec_csv(
    path: Path, flat_names: tuple[str, ...], folder_names: tuple[str, ...], subset: str | None, what: str
) -> Path:
    """The one CSV of a kind: a flat file in ``path``, else a CSV in a matching folder."""
    for name in flat_names:
        if (path / name).is_file():
            return path / name
    folder = _find_dir(path, folder_names)
    if folder is None:
        raise ValueError(
            f"{path}: no PixelRec {what}: expected {' or '.join(flat_names)}, or a folder "
            f"({', '.join(folder_names)}) holding <Subset>.csv"
        )
    csvs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if subset is not None:
        chosen = [p for p in csvs if p.stem.lower() == subset.lower()]
        if chosen:
            return chosen[0]
        if len(csvs) != 1:
            raise ValueError(f"{folder}: no {subset}.csv for the {what}; found {[p.name for p in csvs]}")
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise ValueError(f"{folder}: no {what} (*.csv) in the folder")
    raise ValueError(f"{folder}: several {what}s {[p.name for p in csvs]}; pick one with subset=")


# ----------------------------------------------------------------------------- shared write path
def _write_raw(
    source: str,
    store: ObjectStore,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    images_dir: Path,
    *,
    items_file: Path,
    limits: ValidationConfig | None,
) -> ImportSummary:
    """Copy images, then write the catalog and the daily impression partitions.

    Args:
        items: item_id, title, category, tags (list of str), optional description; one row per item.
        interactions: user_id, item_id, ts (int64 unix seconds), clicked (bool); one row per impression.
        images_dir: folder of ``<item_id>.<ext>`` reference images.
        items_file: the file ``items`` came from, for error messages.
    """
    # 1. Items: one row per safe id.
    items = _unique_safe_items(source, items, items_file)
    # 2. Images: each copied under the root if it decodes; items without one are skipped, named.
    image_files = _index_images(images_dir)
    has_file = items["item_id"].isin(list(image_files))
    no_image_ids = items.loc[~has_file, "item_id"].tolist()
    candidates = items.loc[has_file]
    uris = _copy_images(
        store,
        candidates["item_id"].tolist(),
        [image_files[i] for i in candidates["item_id"]],
        limits or ValidationConfig(),
    )
    bad_image_ids = [i for i in candidates["item_id"] if uris[i] is None]
    catalog = candidates.loc[candidates["item_id"].map(uris).notna()].copy()
    catalog["reference_image_uri"] = catalog["item_id"].map(uris)
    for ids, why in (
        (no_image_ids, "have no image"),
        (bad_image_ids, "have an unusable image (reasons above)"),
    ):
        if ids:
            log.warning("import[%s]: %d items %s in %s, skipped (e.g. %s)",
                        source, len(ids), why, images_dir, ids[:SAMPLE_IDS])  # fmt: skip
    if catalog.empty:
        raise ValueError(f"{source}: no item of {items_file} has a decodable image in {images_dir}")
    # 3. Impressions of imported items only, each showing the item's reference image.
    kept = interactions["item_id"].isin(catalog["item_id"]) & interactions["user_id"].notna()
    unknown = int((~interactions["item_id"].isin(items["item_id"])).sum())
    dropped = int((~kept).sum())
    if dropped:
        log.warning("import[%s]: dropped %d interactions (%d of items not in %s, the rest of skipped items "
                    "or without a user id)", source, dropped, unknown, items_file)  # fmt: skip
    impressions = interactions.loc[kept].sort_values("ts", kind="stable")
    if impressions.empty:
        raise ValueError(f"{source}: no interaction refers to an imported item; nothing to write")
    impressions = impressions.assign(
        cover_uri=impressions["item_id"].map(catalog.set_index("item_id")["reference_image_uri"])
    )
    # 4. Daily impression partitions, then the catalog as of the first day (its partition marks the import done).
    days = _write_impressions(store, impressions)
    first_day_start = int(impressions["ts"].iloc[0]) // SECONDS_PER_DAY * SECONDS_PER_DAY
    _write_catalog(store, catalog, days[0], updated_at_seconds=first_day_start)
    summary = ImportSummary(
        source=source, items_imported=len(catalog), items_skipped_no_image=len(no_image_ids),
        items_skipped_bad_image=len(bad_image_ids), sample_no_image_ids=no_image_ids[:SAMPLE_IDS],
        sample_bad_image_ids=bad_image_ids[:SAMPLE_IDS], impressions=len(impressions),
        clicks=int(impressions["clicked"].sum()), interactions_dropped=dropped, catalog_ds=days[0], days=days,
    )  # fmt: skip
    log.info("import[%s]: items=%d impressions=%d clicks=%d days=%d (%s..%s) into %s", source,
             summary.items_imported, summary.impressions, summary.clicks, len(days), days[0], days[-1],
             store.root)  # fmt: skip
    return summary


def _unique_safe_items(source: str, items: pd.DataFrame, items_file: Path) -> pd.DataFrame:
    """Items with an id, the first row of each id; ids that cannot be object keys are an error, named."""
    items = items.loc[items["item_id"].notna()]
    duplicated = items["item_id"].duplicated()
    if duplicated.any():
        log.warning("import[%s]: %d duplicate item ids in %s; keeping the first of each",
                    source, int(duplicated.sum()), items_file)  # fmt: skip
        items = items.loc[~duplicated]
    unsafe = ~items["item_id"].str.fullmatch(SAFE_ID_PATTERN)
    if unsafe.any():
        raise ValueError(
            f"{items_file}: item ids must be letters, digits, '_', '.', '-', at most {MAX_ID_CHARS} "
            "characters (they become object keys); "
            f"bad: {items.loc[unsafe, 'item_id'].head(SAMPLE_IDS).tolist()}"
        )
    return items


def _write_impressions(store: ObjectStore, impressions: pd.DataFrame) -> list[str]:
    """One ``raw/impressions`` partition per UTC day; ``impressions`` must be sorted by ``ts``."""
    ts = impressions["ts"].to_numpy(dtype=np.int64)
    table = pa.table(
        {
            "user_id": _strings(impressions["user_id"]),
            "item_id": _strings(impressions["item_id"]),
            "cover_uri": _strings(impressions["cover_uri"]),
            "shown_at": pa.array(ts * 1_000_000, TIMESTAMP),
            "clicked": pa.array(impressions["clicked"].to_numpy(dtype=bool), pa.bool_()),
        }
    )
    day = ts // SECONDS_PER_DAY
    starts = np.concatenate([[0], np.flatnonzero(np.diff(day)) + 1])
    ends = np.concatenate([starts[1:], [len(ts)]])
    days = []
    for start, end in zip(starts, ends, strict=True):
        ds = str(np.datetime64(int(day[start]), "D"))
        layout.RAW_IMPRESSIONS.write(store, table.slice(int(start), int(end - start)), ds)
        days.append(ds)
    return days


def _write_catalog(store: ObjectStore, catalog: pd.DataFrame, ds: str, *, updated_at_seconds: int) -> None:
    columns: dict[str, pa.Array] = {
        "item_id": _strings(catalog["item_id"]),
        "title": _strings(catalog["title"]),
        "category": _strings(catalog["category"]),
        "reference_image_uri": _strings(catalog["reference_image_uri"]),
        "updated_at": pa.array(np.full(len(catalog), updated_at_seconds * 1_000_000, np.int64), TIMESTAMP),
        "tags": pa.array(catalog["tags"].tolist(), pa.list_(pa.string())),
    }
    if "description" in catalog.columns:
        columns["description"] = _strings(catalog["description"])
    layout.RAW_CATALOG.write(store, pa.table(columns), ds)


def _strings(values: pd.Series) -> pa.Array:
    """A pandas string column as an Arrow string array (zero-copy for Arrow-backed columns; NaN -> null)."""
    array = pa.array(values, from_pandas=True)
    return array.cast(pa.string()) if not pa.types.is_null(array.type) else pa.nulls(len(values), pa.string())


# ----------------------------------------------------------------------------- images
def _index_images(folder: Path) -> dict[str, Path]:
    """``item_id -> image file`` for ``<item_id>.<ext>`` files in ``folder`` (one listing, no per-item stat)."""
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            r = rank.get(suffix.lower())
            if r is not None and entry.is_file() and (stem not in found or r < found[stem][0]):
                found[stem] = (r, Path(entry.path))
    return {stem: p for stem, (_, p) in found.items()}


def _checked_image(file: Path, folder: Path, limits: ValidationConfig) -> tuple[bytes, str] | str:
    """``(bytes, extension)`` of an image file validate would accept, else the reason it is skipped.

    The same limits as validate, in the same order (``icg_core.data.images``): the byte size from a
    stat, before reading; then format and width x height from the header, so a 144-megapixel poster is
    refused without being decoded; then a decode, which catches truncated files. A symbolic link that
    leaves the input folder is refused like a missing file: an import reads only what it was given.
    """
    real = file.resolve()
    if not real.is_relative_to(folder.resolve()):
        return f"{file.name} links outside {folder}"
    size = real.stat().st_size
    if size > limits.max_image_bytes:
        return f"{file.name}: {size} bytes exceeds the limit of {limits.max_image_bytes}"
    data = real.read_bytes()
    check = check_image_bytes(
        data,
        max_bytes=limits.max_image_bytes,
        max_pixels=limits.max_image_pixels,
        min_side=limits.min_image_side,
    )
    if not check.ok:
        return f"{file.name}: {check.label()}"
    return data, _PIL_EXTENSIONS.get(check.format or "", (check.format or "img").lower())


def _copy_images(
    store: ObjectStore, item_ids: list[str], files: list[Path], limits: ValidationConfig
) -> dict[str, str | None]:
    """Check and copy each image to ``raw/images/reference/<item_id>.<ext>``; ``item_id -> key or None``.

    A bad image skips its item (logged with the reason); it never stops the import.
    """

    def copy_one(item_id: str, file: Path) -> str | None:
        checked = _checked_image(file, file.parent, limits)
        if isinstance(checked, str):
            log.warning("import: item %s skipped: %s", item_id, checked)
            return None
        data, ext = checked
        return store.put_bytes(layout.reference_image(item_id, ext), data)

    with ThreadPoolExecutor(max_workers=_COPY_WORKERS) as pool:
        return dict(zip(item_ids, pool.map(copy_one, item_ids, files), strict=True))


# ----------------------------------------------------------------------------- input checks
def _find_dir(path: Path, names: tuple[str, ...]) -> Path | None:
    """The first sub-folder of ``path`` whose name, lowercased without spaces/underscores/dashes, is in ``names``."""
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory")
    folders = {_folder_key(p.name): p for p in sorted(path.iterdir()) if p.is_dir()}
    return next((folders[n] for n in names if n in folders), None)


def _folder_key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _csv_header(file: Path) -> list[str]:
    if not file.is_file():
        raise ValueError(f"missing required file {file}")
    try:
        return [str(c) for c in pd.read_csv(file, nrows=0, encoding="utf-8-sig").columns]
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{file}: cannot read the CSV header: {exc}") from exc


def _read_csv(
    file: Path, required: list[str], *, optional: list[str] | None = None, id_columns: list[str]
) -> pd.DataFrame:
    """Read ``required`` (+ present ``optional``) columns of a UTF-8 CSV; ``id_columns`` as strings.

    Raises:
        ValueError: naming the file and the missing column, or the file and the parse error.
    """
    header = _csv_header(file)
    for column in required:
        if column not in header:
            raise ValueError(f"{file}: missing required column '{column}' (found columns {header})")
    usecols = required + [c for c in optional or [] if c in header and c not in required]
    try:
        frame = pd.read_csv(
            file,
            usecols=usecols,
            dtype={c: str for c in id_columns},
            encoding="utf-8-sig",
            keep_default_na=False,
            na_values=[""],
        )
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read: {exc}") from exc
    return frame


def _numeric(values: pd.Series, file: Path, column: str) -> pd.Series:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        raise ValueError(
            f"{file}: column '{column}' has {int(bad.sum())} non-numeric values, e.g. "
            f"{values[bad].head(3).tolist()}"
        )
    return parsed


def _unix_seconds(values: pd.Series, file: Path, column: str) -> np.ndarray:
    """Integer unix seconds, checked to be seconds (not milliseconds) since 1970."""
    seconds = _numeric(values, file, column).to_numpy(dtype=np.float64)
    out_of_range = (seconds < 0) | (seconds >= _MAX_UNIX_SECONDS)
    if out_of_range.any():
        raise ValueError(
            f"{file}: column '{column}' must be unix seconds (1970..2100); "
            f"{int(out_of_range.sum())} values are not, e.g. {seconds[out_of_range][:3].tolist()}"
        )
    return seconds.astype(np.int64)
