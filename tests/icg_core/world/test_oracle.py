"""The oracle is the exact click model of the simulator and scores any image from its pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world import drawing
from icg_core.world.oracle import Oracle
from icg_core.world.simulator import WorldSummary, generate_world

WORLD = WorldConfig(
    seed=11,
    n_items=24,
    n_users=60,
    days=2,
    impressions_per_day=1500,
    image_size=64,
    variants_per_item=4,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, WorldSummary, Oracle]:
    store = ObjectStore(str(tmp_path_factory.mktemp("oracle_world")))
    summary = generate_world(store, WORLD)
    return store, summary, Oracle.load(store)


@pytest.fixture(scope="module")
def covers(world: tuple[ObjectStore, WorldSummary, Oracle]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(reference covers [N,S,S,3], variants [N*V,S,S,3], category name per item)."""
    store, summary, _ = world
    catalog = store.read_table("catalog_items", ds=summary.ds_list[0], area="raw").to_pylist()
    catalog.sort(key=lambda r: r["item_id"])
    references = np.stack([drawing.decode_png(store.read_object(r["reference_image_uri"])) for r in catalog])
    variants = np.stack(
        [
            drawing.decode_png(store.get_bytes(layout.variant_image(r["item_id"], k)))
            for r in catalog
            for k in range(WORLD.variants_per_item)
        ]
    )
    return references, variants, [r["category"] for r in catalog]


def test_state_lives_under_oracle_prefix(world: tuple[ObjectStore, WorldSummary, Oracle]) -> None:
    store, _, oracle = world
    assert store.list("oracle") == ["oracle/category_classifier.npz", "oracle/users.npz", "oracle/world.json"]
    assert len(oracle.user_ids) == WORLD.n_users and oracle.taste.shape == (
        WORLD.n_users,
        len(drawing.ATTRIBUTES),
    )
    assert oracle.affinity.shape == (WORLD.n_users, WORLD.n_categories)
    for table in ("catalog_items", "impressions"):
        columns = store.read_table(table, ds="2026-11-01", area="raw").column_names
        assert not {"taste", "taste_group", "affinity"} & set(columns)


def test_category_scores_recognize_references_and_variants(
    world: tuple[ObjectStore, WorldSummary, Oracle], covers: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    _, summary, oracle = world
    references, variants, categories = covers
    truth = np.array([oracle.categories.index(c) for c in categories])
    reference_scores = oracle.category_scores(references)
    assert reference_scores.shape == (WORLD.n_items, WORLD.n_categories)
    np.testing.assert_allclose(reference_scores.sum(axis=1), 1.0, rtol=1e-9)
    assert (reference_scores.argmax(axis=1) == truth).mean() >= 0.9
    variant_truth = np.repeat(truth, WORLD.variants_per_item)
    assert (oracle.category_scores(variants).argmax(axis=1) == variant_truth).mean() >= 0.9
    assert summary.category_accuracy >= 0.9


@pytest.mark.parametrize("side", [48, 128, 256])
def test_category_scores_survive_resizing(
    world: tuple[ObjectStore, WorldSummary, Oracle],
    covers: tuple[np.ndarray, np.ndarray, list[str]],
    side: int,
) -> None:
    _, _, oracle = world
    _, variants, categories = covers
    truth = np.repeat([oracle.categories.index(c) for c in categories], WORLD.variants_per_item)
    resized = [Image.fromarray(v).resize((side, side), Image.Resampling.BILINEAR) for v in variants]
    assert (oracle.category_scores(resized).argmax(axis=1) == truth).mean() >= 0.9


def test_taste_groups_span_both_directions(world: tuple[ObjectStore, WorldSummary, Oracle]) -> None:
    _, _, oracle = world
    centres = oracle.group_centres
    assert centres.shape == (WORLD.n_taste_groups, len(drawing.ATTRIBUTES))
    assert (centres.max(axis=0) > 0).all() and (centres.min(axis=0) < 0).all()
    assert (oracle.taste.max(axis=0) > 0).all() and (oracle.taste.min(axis=0) < 0).all()
    groups = oracle.taste_group(list(oracle.user_ids))
    assert groups.dtype.kind == "i" and set(groups.tolist()) <= set(range(WORLD.n_taste_groups))
    # Users sit around their group's centre: closer to it than to the average other centre.
    own = np.linalg.norm(oracle.taste - centres[groups], axis=1)
    other = np.linalg.norm(oracle.taste[:, None] - centres[None], axis=2).mean(axis=1)
    assert own.mean() < other.mean()


def _shifted(image: np.ndarray, attribute: str, amount: float) -> np.ndarray:
    jitter = {"warmth": 0.0, "brightness": 0.0, "log_saturation": 0.0, "log_contrast": 0.0}
    jitter[attribute] = amount
    return drawing.apply_jitter(
        image[None], drawing.CoverJitter(**{k: np.array([v]) for k, v in jitter.items()})
    )[0]


def test_warm_lover_prefers_warmer_cover(
    world: tuple[ObjectStore, WorldSummary, Oracle], covers: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    _, _, oracle = world
    references, _, _ = covers
    warmth = oracle.taste[:, drawing.ATTRIBUTES.index("warmth")]
    warm_lover, cool_lover = oracle.user_ids[warmth.argmax()], oracle.user_ids[warmth.argmin()]
    assert warmth.max() > 0 > warmth.min()
    for image in references[:5]:
        warmer, cooler = _shifted(image, "warmth", 0.1), _shifted(image, "warmth", -0.1)
        p = oracle.click_probability(
            [warm_lover, warm_lover, cool_lover, cool_lover], np.stack([warmer, cooler] * 2)
        )
        assert p[0] > p[1] and p[2] < p[3]


@pytest.mark.parametrize(
    ("attribute", "jitter_name", "amount"),
    [
        ("warmth", "warmth", 0.08),
        ("brightness", "brightness", 0.1),
        ("saturation", "log_saturation", 0.5),
        ("contrast", "log_contrast", 0.4),
    ],
)
def test_click_probability_moves_with_taste(
    world: tuple[ObjectStore, WorldSummary, Oracle],
    covers: tuple[np.ndarray, np.ndarray, list[str]],
    attribute: str,
    jitter_name: str,
    amount: float,
) -> None:
    """Raising an attribute raises p exactly for users whose taste . attribute change is positive."""
    _, _, oracle = world
    image = covers[0][0]
    up, down = _shifted(image, jitter_name, amount), _shifted(image, jitter_name, -amount)
    delta = oracle.standardized_attributes(np.stack([up, down]))
    delta = delta[0] - delta[1]
    index = drawing.ATTRIBUTES.index(attribute)
    assert delta[index] > 0.3  # the intended attribute moves up (others may follow: they share pixels)
    users = list(oracle.user_ids)
    p_up = oracle.click_probability(users, np.repeat(up[None], len(users), axis=0))
    p_down = oracle.click_probability(users, np.repeat(down[None], len(users), axis=0))
    expected = np.sign(oracle.taste @ delta)
    moved = np.abs(oracle.taste @ delta) > 1e-3  # ignore users indifferent to this change
    assert moved.mean() > 0.9
    assert (np.sign(p_up - p_down)[moved] == expected[moved]).all()


def test_empirical_ctr_matches_oracle_probability(world: tuple[ObjectStore, WorldSummary, Oracle]) -> None:
    store, summary, oracle = world
    impressions = store.read_tables("impressions", dss=summary.ds_list, area="raw").to_pylist()
    decoded: dict[str, np.ndarray] = {}
    for row in impressions:
        if row["cover_uri"] not in decoded:
            decoded[row["cover_uri"]] = drawing.decode_png(store.read_object(row["cover_uri"]))
    images = np.stack([decoded[r["cover_uri"]] for r in impressions])
    p = oracle.click_probability([r["user_id"] for r in impressions], images)
    clicked = np.array([r["clicked"] for r in impressions])
    # The loaded oracle, scoring the stored pixels, reproduces the simulator's probabilities exactly.
    assert p.mean() == pytest.approx(summary.mean_click_probability, rel=1e-9)
    assert abs(clicked.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    # Clicks follow p, not just its mean: the top half of p clicks more than the bottom half.
    order = np.argsort(p)
    half = len(p) // 2
    assert clicked[order[half:]].mean() > clicked[order[:half]].mean() + 0.1


def test_expected_ctr_is_mean_pairwise_probability(
    world: tuple[ObjectStore, WorldSummary, Oracle], covers: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    _, _, oracle = world
    image = covers[1][3]
    users = list(oracle.user_ids[:20])
    pairwise = oracle.click_probability(users, np.repeat(image[None], len(users), axis=0))
    assert oracle.expected_ctr(users, image) == pytest.approx(pairwise.mean(), rel=1e-12)
    assert oracle.expected_ctr(users, Image.fromarray(image)) == pytest.approx(pairwise.mean(), rel=1e-12)
    assert oracle.expected_ctr(users, image.astype(np.float32) / 255.0) == pytest.approx(
        pairwise.mean(), rel=1e-6
    )


def test_click_noise_floors_and_caps_probability(world: tuple[ObjectStore, WorldSummary, Oracle]) -> None:
    _, _, oracle = world
    floor = WORLD.click_noise / (1 + np.exp(-WORLD.base_click_logit))
    rows = np.arange(len(oracle.user_ids))
    extreme = np.full((len(rows), len(drawing.ATTRIBUTES)), 50.0)
    scores = np.full((len(rows), WORLD.n_categories), 1.0 / WORLD.n_categories)
    for sign in (1.0, -1.0):
        p = oracle.click_probability_from_features(rows, sign * extreme, scores)
        assert (p >= floor - 1e-12).all() and (p <= 1 - WORLD.click_noise + floor + 1e-12).all()


def test_image_attributes_units(world: tuple[ObjectStore, WorldSummary, Oracle]) -> None:
    _, _, oracle = world
    size = WORLD.image_size
    black = np.zeros((size, size, 3), np.uint8)
    red = black.copy()
    red[..., 0] = 255
    half = black.copy()
    half[:, size // 2 :] = 255
    attributes = oracle.image_attributes(np.stack([black, red, half]))
    np.testing.assert_allclose(attributes[0], [0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(attributes[1], [1.0, 0.299, 1.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(attributes[2], [0.0, 0.5, 0.0, 0.5], atol=1e-3)


def test_unknown_user_and_mismatched_batch_are_refused(
    world: tuple[ObjectStore, WorldSummary, Oracle], covers: tuple[np.ndarray, np.ndarray, list[str]]
) -> None:
    _, _, oracle = world
    with pytest.raises(KeyError, match="user_99999"):
        oracle.taste_group(["user_99999"])
    with pytest.raises(ValueError, match="elementwise"):
        oracle.click_probability(list(oracle.user_ids[:3]), covers[0][:2])


def test_reference_images_are_stored_where_the_catalog_says(
    world: tuple[ObjectStore, WorldSummary, Oracle],
) -> None:
    store, summary, _ = world
    catalog = store.read_table("catalog_items", ds=summary.ds_list[0], area="raw").to_pylist()
    assert {store.key(r["reference_image_uri"]) for r in catalog} == set(
        store.list(layout.reference_images())
    )
