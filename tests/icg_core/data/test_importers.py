"""MovieLens and PixelRec importers on tiny fixtures in the public file layouts."""

from __future__ import annotations

import datetime as dt
import io
import logging
import random
from pathlib import Path

import pytest
from PIL import Image

from icg_core.data.importers import ImportSummary, import_movielens, import_pixelrec
from icg_core.storage import ObjectStore
from tests.icg_core.conftest import png_declaring

DAY1 = int(dt.datetime(2020, 3, 1, tzinfo=dt.UTC).timestamp())
DAY2 = DAY1 + 86_400


def _jpeg(color: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG whose header opens but whose scan data stops halfway (a partial download)."""
    noise = random.Random(0).randbytes(64 * 64 * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), noise).save(buf, format="JPEG")
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    Image.open(io.BytesIO(data))  # the header alone passes: only decoding finds the damage
    return data


def _all_impressions(store: ObjectStore) -> list[dict]:
    dss = store.partitions("impressions", area="raw")
    return store.read_tables("impressions", dss=dss, area="raw").to_pylist()


def _catalog(store: ObjectStore, summary: ImportSummary) -> dict[str, dict]:
    rows = store.read_table("catalog_items", ds=summary.catalog_ds, area="raw").to_pylist()
    return {r["item_id"]: r for r in rows}


# ----------------------------------------------------------------------------- MovieLens
MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
11,"American President, The (1995)",Comedy|Drama|Romance
4973,"Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)",Comedy|Romance
182727,Happy Death Day 2U (2019),(no genres listed)
5,Father of the Bride Part II (1995),Comedy
6,Heat (1995),Action|Crime|Thriller
7,Sabrina (1995),Comedy|Romance
"""
# (userId, movieId, rating, timestamp): 5 has no poster, 6 a corrupt one, 7 a truncated one, 999 is
# not in movies.csv: their ratings are dropped.
RATINGS = [
    (1, 1, 4.0, DAY1 + 10),
    (1, 11, 3.5, DAY1 + 20),
    (2, 4973, 5.0, DAY1 + 86_399),
    (2, 182727, 2.0, DAY2),
    (3, 1, 4.5, DAY2 + 100),
    (3, 11, 0.5, DAY2 + 200),
    (3, 5, 5.0, DAY1 + 30),
    (3, 6, 4.0, DAY2 + 300),
    (1, 7, 4.0, DAY2 + 400),
    (4, 999, 4.0, DAY2 + 500),
]


def _write_movielens(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.csv").write_text(MOVIES_CSV, encoding="utf-8")
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r},{t}" for u, m, r, t in RATINGS]
    (root / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    posters = root / "posters"
    posters.mkdir()
    for i, movie_id in enumerate((1, 11, 4973, 182727)):
        (posters / f"{movie_id}.jpg").write_bytes(_jpeg((40 * i, 100, 200)))
    (posters / "6.jpg").write_bytes(b"this is not a jpeg")
    (posters / "7.jpg").write_bytes(_truncated_jpeg())
    return root


@pytest.fixture()
def movielens(tmp_path: Path) -> Path:
    return _write_movielens(tmp_path / "ml-latest-small")


def test_movielens_catalog_maps_titles_genres_and_posters(movielens: Path, tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    summary = import_movielens(movielens, store)

    assert summary.catalog_ds == "2020-03-01"
    assert store.partitions("catalog_items", area="raw") == ["2020-03-01"]
    catalog = _catalog(store, summary)
    assert set(catalog) == {"1", "11", "4973", "182727"}
    assert catalog["11"]["title"] == "American President, The (1995)"
    assert catalog["4973"]["title"] == "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert catalog["1"]["category"] == "Adventure"
    assert catalog["1"]["tags"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert catalog["182727"]["category"] == "unknown"
    assert catalog["182727"]["tags"] == []
    for item_id, row in catalog.items():
        assert row["reference_image_uri"] == f"raw/images/reference/{item_id}.jpg"  # relative to the root
        with Image.open(io.BytesIO(store.read_object(row["reference_image_uri"]))) as img:
            img.load()
            assert img.size == (24, 24)
    first_shown = min(r["shown_at"] for r in _all_impressions(store))
    assert all(row["updated_at"] <= first_shown for row in catalog.values())
    assert catalog["1"]["updated_at"] == dt.datetime(2020, 3, 1, tzinfo=dt.UTC)


def test_movielens_impressions_clicks_and_daily_partitions(movielens: Path, tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    summary = import_movielens(movielens, store)

    rows = _all_impressions(store)
    kept = [r for r in RATINGS if r[1] in (1, 11, 4973, 182727)]
    assert summary.impressions == len(rows) == len(kept) == 6
    assert summary.clicks == sum(r[2] >= 4.0 for r in kept) == 3
    assert summary.days == store.partitions("impressions", area="raw") == ["2020-03-01", "2020-03-02"]
    by_key = {(r["user_id"], r["item_id"]): r for r in rows}
    catalog = _catalog(store, summary)
    for user, movie, rating, ts in kept:
        row = by_key[(str(user), str(movie))]
        assert row["clicked"] == (rating >= 4.0)
        assert row["shown_at"] == dt.datetime.fromtimestamp(ts, dt.UTC)
        assert row["ds"] == row["shown_at"].date().isoformat()
        assert row["cover_uri"] == catalog[str(movie)]["reference_image_uri"]
    assert by_key[("2", "4973")]["ds"] == "2020-03-01"  # last second of the day stays on that day


def test_movielens_reports_skipped_items_and_dropped_ratings(
    movielens: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    with caplog.at_level(logging.WARNING, logger="icg_core.data.importers"):
        summary = import_movielens(movielens, store)

    assert summary.source == "movielens"
    assert summary.items_imported == 4
    assert summary.items_skipped_no_image == 1 and summary.sample_no_image_ids == ["5"]
    assert summary.items_skipped_bad_image == 2 and sorted(summary.sample_bad_image_ids) == ["6", "7"]
    assert summary.interactions_dropped == 4  # items 5, 6, 7 and the unknown 999
    assert "no image" in caplog.text and "unusable image" in caplog.text and "dropped 4" in caplog.text
    assert not any(key.rsplit("/", 1)[-1].startswith(("5.", "6.", "7.")) for key in store.list("raw/images"))
    assert summary.to_dict()["days"] == summary.days


def test_movielens_applies_validates_image_limits_and_stays_in_its_folder(
    movielens: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (movielens / "movies.csv").open("a", encoding="utf-8") as out:
        out.write("8,Huge Poster (1995),Drama\n9,Linked Poster (1995),Drama\n10,Tiny Poster (1995),Drama\n")
    posters = movielens / "posters"
    (posters / "8.png").write_bytes(png_declaring(12_000, 12_000))  # 144 megapixels, from the header
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(_jpeg((1, 2, 3)))
    (posters / "9.jpg").symlink_to(outside)  # a valid image, but not one the import was given
    (posters / "10.jpg").write_bytes(_jpeg((9, 9, 9), size=8))  # under validate's 16-pixel side
    store = ObjectStore(str(tmp_path / "store"))
    with caplog.at_level(logging.WARNING, logger="icg_core.data.importers"):
        summary = import_movielens(movielens, store)
    assert summary.items_imported == 4
    assert sorted(summary.sample_bad_image_ids) == ["10", "6", "7", "8", "9"]
    assert "8.png: too_many_pixels" in caplog.text and "144000000 pixels" in caplog.text
    assert "9.jpg links outside" in caplog.text and "10.jpg: too_small" in caplog.text


def test_movielens_click_threshold(movielens: Path, tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    summary = import_movielens(movielens, store, click_threshold=4.5)
    clicked = {(r["user_id"], r["item_id"]) for r in _all_impressions(store) if r["clicked"]}
    assert clicked == {("2", "4973"), ("3", "1")} and summary.clicks == 2


def test_movielens_reimport_is_idempotent(movielens: Path, tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    first = import_movielens(movielens, store)
    images = store.list("raw/images")
    rows_before = sorted(_all_impressions(store), key=lambda r: (r["shown_at"], r["user_id"]))
    second = import_movielens(movielens, store)

    assert second.to_dict() == first.to_dict()
    assert store.list("raw/images") == images
    assert sorted(_all_impressions(store), key=lambda r: (r["shown_at"], r["user_id"])) == rows_before
    for ds in second.days:
        assert len(store.committed_files("impressions", ds=ds, area="raw")) == 1
        assert len([k for k in store.list(f"raw/impressions/ds={ds}") if k.endswith(".parquet")]) == 1
    assert len(_catalog(store, second)) == first.items_imported


def test_movielens_missing_file_or_column_is_named(movielens: Path, tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    (movielens / "ratings.csv").rename(movielens / "ratings.bak")
    with pytest.raises(ValueError, match="ratings.csv"):
        import_movielens(movielens, store)
    (movielens / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,100\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ratings\.csv.*'rating'"):
        import_movielens(movielens, store)
    (movielens / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1583020800000\n")
    with pytest.raises(ValueError, match=r"'timestamp'.*unix seconds"):
        import_movielens(movielens, store)
    assert store.partitions("impressions", area="raw") == []


def test_movielens_without_posters_folder_fails_clearly(movielens: Path, tmp_path: Path) -> None:
    (movielens / "posters").rename(movielens / "elsewhere")
    with pytest.raises(ValueError, match="posters"):
        import_movielens(movielens, ObjectStore(str(tmp_path / "store")))


# ----------------------------------------------------------------------------- PixelRec
PIXELREC_ITEM_HEADER = (
    "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
    "barrage_number,title,tag,description"
)
PIXELREC_ITEMS = [
    'i0,1200,3,40,2,5,9,11,猫咪的一天,"Pets, Cats",a day with a cat',
    'i1,800,1,10,0,1,2,0,"Ramen, at home",Food,',
    "i2,50,0,1,0,0,0,0,no cover here,Travel,missing image",
    "i3,70,0,2,0,0,0,0,broken cover,Music,corrupt image",
    "i4,90,0,3,0,0,0,0,no tag item,,",
]
# (item_id, user_id, timestamp)
PIXELREC_INTERACTIONS = [
    ("i0", "u1", DAY1 + 5),
    ("i1", "u1", DAY1 + 50),
    ("i0", "u2", DAY2 + 5),
    ("i0", "u2", DAY2 + 6),  # a repeat: PixelRec keeps repeated interactions, so do we
    ("i2", "u3", DAY1 + 7),
    ("i3", "u3", DAY2 + 8),
    ("i4", "u3", DAY2 + 9),
]


def _write_pixelrec_public(root: Path, subsets: tuple[str, ...] = ("Pixel200K",)) -> Path:
    (root / "pixelrec_interaction").mkdir(parents=True)
    (root / "pixelrec_iteminfo").mkdir()
    for subset in subsets:
        lines = ["item_id,user_id,timestamp"] + [f"{i},{u},{t}" for i, u, t in PIXELREC_INTERACTIONS]
        (root / "pixelrec_interaction" / f"{subset}.csv").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
        items = "\n".join([PIXELREC_ITEM_HEADER, *PIXELREC_ITEMS]) + "\n"
        (root / "pixelrec_iteminfo" / f"{subset}.csv").write_text(items, encoding="utf-8")
    covers = root / "cover"
    covers.mkdir()
    for i, item_id in enumerate(("i0", "i1", "i4")):
        (covers / f"{item_id}.jpg").write_bytes(_jpeg((200, 30 * i, 10)))
    (covers / "i3.jpg").write_bytes(b"\x00" * 64)
    return root


def test_pixelrec_public_layout(tmp_path: Path) -> None:
    root = _write_pixelrec_public(tmp_path / "pixelrec")
    store = ObjectStore(str(tmp_path / "store"))
    summary = import_pixelrec(root, store)

    assert summary.source == "pixelrec"
    assert summary.items_imported == 3
    assert (summary.items_skipped_no_image, summary.sample_no_image_ids) == (1, ["i2"])
    assert (summary.items_skipped_bad_image, summary.sample_bad_image_ids) == (1, ["i3"])
    assert summary.interactions_dropped == 2
    assert summary.days == ["2020-03-01", "2020-03-02"] and summary.catalog_ds == "2020-03-01"

    catalog = _catalog(store, summary)
    assert catalog["i0"]["title"] == "猫咪的一天"
    assert (catalog["i0"]["category"], catalog["i0"]["tags"]) == ("Pets", ["Pets", "Cats"])
    assert catalog["i0"]["description"] == "a day with a cat"
    assert catalog["i1"]["title"] == "Ramen, at home" and catalog["i1"]["description"] is None
    assert (catalog["i4"]["category"], catalog["i4"]["tags"]) == ("unknown", [])

    rows = _all_impressions(store)
    assert len(rows) == summary.impressions == summary.clicks == 5
    assert all(r["clicked"] for r in rows)
    assert sorted((r["item_id"], r["user_id"], r["ds"]) for r in rows) == [
        ("i0", "u1", "2020-03-01"),
        ("i0", "u2", "2020-03-02"),
        ("i0", "u2", "2020-03-02"),
        ("i1", "u1", "2020-03-01"),
        ("i4", "u3", "2020-03-02"),
    ]
    for r in rows:
        assert r["cover_uri"] == catalog[r["item_id"]]["reference_image_uri"]
        with Image.open(io.BytesIO(store.read_object(r["cover_uri"]))) as img:
            img.load()
    assert min(r["shown_at"] for r in rows) >= catalog["i0"]["updated_at"]


def test_pixelrec_reimport_is_idempotent(tmp_path: Path) -> None:
    root = _write_pixelrec_public(tmp_path / "pixelrec")
    store = ObjectStore(str(tmp_path / "store"))
    first = import_pixelrec(root, store)
    second = import_pixelrec(root, store)
    assert second.to_dict() == first.to_dict()
    assert len(_all_impressions(store)) == first.impressions
    assert len(_catalog(store, second)) == first.items_imported


def test_pixelrec_flat_layout_without_tag_column(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "covers").mkdir(parents=True)
    (root / "interactions.csv").write_text(f"item_id,user_id,timestamp\ni9,u1,{DAY1}\n", encoding="utf-8")
    (root / "item_info.csv").write_text("item_id,title_en\ni9,A title in English\n", encoding="utf-8")
    (root / "covers" / "i9.jpg").write_bytes(_jpeg((0, 0, 0)))
    store = ObjectStore(str(tmp_path / "store"))
    summary = import_pixelrec(root, store)
    row = _catalog(store, summary)["i9"]
    assert (row["title"], row["category"], row["tags"]) == ("A title in English", "unknown", [])


def test_pixelrec_several_subsets_need_a_choice(tmp_path: Path) -> None:
    root = _write_pixelrec_public(tmp_path / "pixelrec", subsets=("Pixel200K", "Pixel1M"))
    store = ObjectStore(str(tmp_path / "store"))
    with pytest.raises(ValueError, match="Pixel1M.csv.*Pixel200K.csv|subset"):
        import_pixelrec(root, store)
    assert import_pixelrec(root, store, subset="Pixel1M").impressions == 5


def test_pixelrec_missing_column_is_named(tmp_path: Path) -> None:
    root = _write_pixelrec_public(tmp_path / "pixelrec")
    (root / "pixelrec_interaction" / "Pixel200K.csv").write_text(
        "item_id,timestamp\ni0,1\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"Pixel200K\.csv.*'user_id'"):
        import_pixelrec(root, ObjectStore(str(tmp_path / "store")))
    (root / "pixelrec_iteminfo" / "Pixel200K.csv").unlink()
    with pytest.raises(ValueError, match="item_info"):
        import_pixelrec(root, ObjectStore(str(tmp_path / "store")))
