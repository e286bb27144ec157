"""User embeddings (BPR + visual preference) and stable k-means segments."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from icg_core.models.users import (
    ATTRIBUTE_NAMES,
    Segments,
    UserEmbeddings,
    UsersConfig,
    align_to_previous,
    assign_segments,
    cover_attributes,
    import_user_embeddings,
    keep_segments,
    load_segments,
    load_user_embeddings,
    match_segment_ids,
    pixel_attributes,
    resegment_today,
    train_bpr,
    train_user_embeddings,
    visual_preferences,
)
from icg_core.stages.users import run_users
from icg_core.storage import ObjectStore
from tests.icg_core.rewards.synthetic import planted_logs

SMALL = UsersConfig(embedding_dim=8, bpr_epochs=5, n_segments=2, kmeans_restarts=3)


def test_pixel_attributes_of_flat_colours():
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    grey = np.full((1, 8, 8, 3), 128, np.uint8)
    halves = np.zeros((1, 8, 8, 3), np.uint8)
    halves[:, :4] = 255
    attrs = pixel_attributes(np.concatenate([red, grey, halves]))
    assert attrs.shape == (3, len(ATTRIBUTE_NAMES)) and attrs.dtype == np.float32
    warmth, brightness, saturation, contrast = attrs.T
    assert warmth[0] == pytest.approx(1.0) and saturation[0] == pytest.approx(1.0) and contrast[0] == 0
    assert warmth[1] == 0 and saturation[1] == 0 and brightness[1] == pytest.approx(128 / 255, abs=1e-3)
    assert contrast[2] == pytest.approx(0.5) and brightness[2] == pytest.approx(0.5)


def test_bpr_loss_decreases_and_factors_separate_groups():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 20
    users = rng.integers(n_users, size=4000)
    items = rng.integers(n_items, size=4000)
    clicked = (users % 2) == (items % 2)  # even users click even items only
    cfg = UsersConfig(embedding_dim=8, bpr_epochs=10, bpr_lr=0.05)
    user_factors, item_factors, losses = train_bpr(users, items, clicked, n_users, n_items, cfg)
    assert user_factors.shape == (n_users, 4) and item_factors.shape == (n_items, 4)
    assert losses[-1] < 0.5 * losses[0]
    scores = user_factors @ item_factors.T
    liked = scores[np.add.outer(np.arange(n_users), np.arange(n_items)) % 2 == 0].mean()
    assert liked > scores[np.add.outer(np.arange(n_users), np.arange(n_items)) % 2 == 1].mean()


def test_visual_preferences_sign_and_shrinkage():
    # user 0 clicks only bright covers (10 impressions), user 1 only dark ones, user 2 has one impression.
    users = np.array([0] * 10 + [1] * 10 + [2])
    bright = np.tile([1.0, -1.0], 5)
    attributes = np.zeros((21, 4))
    attributes[:20, 1] = np.concatenate([bright, bright])
    attributes[20, 1] = 1.0
    clicked = np.concatenate([bright > 0, bright < 0, [True]])
    loose = visual_preferences(users, attributes, clicked, 3, prior=0.0)
    shrunk = visual_preferences(users, attributes, clicked, 3, prior=5.0)
    assert loose[0, 1] == pytest.approx(2.0) and loose[1, 1] == pytest.approx(-2.0)
    assert 0 < shrunk[0, 1] < loose[0, 1]
    assert np.all(loose[2] == 0)  # no skip: no evidence


def test_embeddings_recover_planted_taste(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, per_day=600, strength=5.0)
    attributes = cover_attributes(store, logs.impressions.column("cover_uri").to_pylist())
    embeddings = train_user_embeddings(logs.impressions, attributes, SMALL, "v1")
    assert embeddings.embeddings.shape == (60, SMALL.embedding_dim)
    assert np.isfinite(embeddings.embeddings).all()
    segments = assign_segments(embeddings, SMALL)
    truth = [logs.user_group[u] for u in segments.user_ids]
    assert adjusted_rand_score(truth, segments.segment_ids) > 0.6
    again = assign_segments(train_user_embeddings(logs.impressions, attributes, SMALL, "v1"), SMALL)
    assert np.array_equal(again.segment_ids, segments.segment_ids)  # seeded: reruns agree


def _clusters(seed: int = 0) -> UserEmbeddings:
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = np.concatenate([c + rng.normal(0, 0.3, (20, 2)) for c in centres]).astype(np.float32)
    return UserEmbeddings(np.array([f"u{i}" for i in range(60)]), points, "v")


@pytest.mark.parametrize("permutation", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_segment_ids_follow_previous_centroids(permutation):
    cfg = UsersConfig(n_segments=3, kmeans_restarts=3)
    first = assign_segments(_clusters(), cfg)
    # Yesterday's centroids with shuffled ids, and no users in common: matching goes by centroids.
    relabel = dict(zip(sorted(first.centroids), permutation, strict=True))
    previous = Segments(
        np.array(["someone-else"]),
        np.array([0], np.int32),
        {relabel[s]: c + 0.1 for s, c in first.centroids.items()},
        "stored",
    )
    today = assign_segments(_clusters(seed=1), cfg, previous)
    assert today.matched_by == "centroids"
    expected = np.array([relabel[s] for s in first.segment_ids])
    assert np.array_equal(today.segment_ids, expected)


def test_segment_ids_follow_previous_members_when_users_overlap():
    cfg = UsersConfig(n_segments=3, kmeans_restarts=3)
    first = assign_segments(_clusters(), cfg)
    renamed = {s: 10 + s for s in first.centroids}
    previous = Segments(
        first.user_ids,
        np.array([renamed[s] for s in first.segment_ids], np.int32),
        {renamed[s]: -c for s, c in first.centroids.items()},  # centroids in another space
        "stored",
    )
    today = assign_segments(_clusters(), cfg, previous)
    assert today.matched_by == "users"
    assert np.array_equal(today.segment_ids, previous.segment_ids)


def test_more_segments_than_yesterday_get_fresh_ids():
    labels = np.array([0, 1, 2])
    previous = Segments(
        np.array(["a", "b"]), np.array([4, 7], np.int32), {4: np.zeros(2), 7: np.ones(2)}, "stored"
    )
    ids, how = match_segment_ids(labels, np.zeros((3, 2), np.float32), np.array(["a", "b", "c"]), previous)
    assert how == "users" and ids[0] == 4 and ids[1] == 7 and ids[2] == 8


def test_import_user_embeddings(tmp_path):
    store = ObjectStore(str(tmp_path / "root"))
    table = pa.table({"user_id": ["a", "b"], "embedding": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]})
    outside = tmp_path / "platform.parquet"
    pq.write_table(table, outside)
    imported = import_user_embeddings(store, str(outside))
    assert imported.source == "imported" and imported.embeddings.shape == (2, 3)
    assert imported.embeddings.dtype == np.float32 and list(imported.user_ids) == ["a", "b"]
    inside = store.uri("platform/embeddings.parquet")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    store.put_bytes("platform/embeddings.parquet", buf.getvalue().to_pybytes())
    assert np.array_equal(import_user_embeddings(store, inside).embeddings, imported.embeddings)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "embedding": [[1.0], [1.0, 2.0]]}), ragged)
    with pytest.raises(ValueError, match="fixed length"):
        import_user_embeddings(store, str(ragged))
    duplicated = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"user_id": ["a", "a"], "embedding": [[1.0], [2.0]]}), duplicated)
    with pytest.raises(ValueError, match="duplicate"):
        import_user_embeddings(store, str(duplicated))


def test_run_users_writes_tables_and_keeps_ids_next_day(tmp_path):
    store = ObjectStore(str(tmp_path))
    day1 = planted_logs(store, ds="2026-11-10", per_day=600, strength=5.0)
    summary = run_users(store, day1.ds, SMALL)
    assert (
        summary.n_users == 60
        and summary.embedding_dim == SMALL.embedding_dim
        and summary.matched_by == "none"
    )
    assert sum(summary.segment_sizes.values()) == 60
    embeddings = load_user_embeddings(store, day1.ds)
    assert embeddings.embeddings.shape == (60, summary.embedding_dim)
    assert embeddings.model_version == summary.model_version
    segments = load_segments(store, day1.ds)
    assert set(segments.centroids) == set(summary.segment_sizes)
    assert store.exists(f"models/users/{summary.model_version}/_SUCCESS")
    day2 = planted_logs(store, ds="2026-11-11", per_day=600, strength=5.0, log_seed=1)
    kept = run_users(store, day2.ds, SMALL.model_copy(update={"resegment_every_days": 10_000}))
    assert kept.matched_to_ds == day1.ds and kept.matched_by == "kept"  # between re-segmentations
    assert set(load_segments(store, day2.ds).centroids) == set(segments.centroids)
    second = run_users(
        store, day2.ds, SMALL.model_copy(update={"resegment_every_days": 1})
    )  # k-means every night
    assert second.matched_to_ds == day1.ds and second.matched_by == "users"
    new = load_segments(store, day2.ds)
    old_of = dict(zip(segments.user_ids, segments.segment_ids, strict=True))
    kept = np.mean([old_of[u] == s for u, s in zip(new.user_ids, new.segment_ids, strict=True)])
    assert kept > 0.8  # same planted users, same segment ids
    # The retrained collaborative block was rotated onto day 1's: the same ids sit in the same place.
    assert second.alignment["to_ds"] == day1.ds and second.alignment["shared_users"] == 60
    assert second.alignment["residual_after"] < second.alignment["residual_before"]
    moved = [
        np.linalg.norm(new.centroids[i] - segments.centroids[i])
        for i in new.centroids
        if i in segments.centroids
    ]
    spread = np.mean([np.linalg.norm(c) for c in segments.centroids.values()])
    assert np.mean(moved) < 0.5 * spread


def test_segments_are_kept_between_scheduled_resegmentations() -> None:
    previous = Segments(np.array(["a", "b", "c"]), np.array([3, 3, 5], np.int32),
                        {3: np.array([0.0, 0.0], np.float32), 5: np.array([4.0, 4.0], np.float32)}, "none")  # fmt: skip
    today = UserEmbeddings(
        np.array(["a", "b", "c", "d"]), np.array([[0, 1], [1, 0], [5, 5], [3, 4]], np.float32), "v"
    )
    kept = keep_segments(today, previous)
    assert kept.segment_ids.tolist() == [3, 3, 5, 5] and kept.matched_by == "kept"
    assert np.allclose(kept.centroids[3], [0.5, 0.5]) and np.allclose(kept.centroids[5], [4.0, 4.5])
    assert resegment_today("2026-11-11", 7, previous, k=3, dim=2)  # K changed
    assert resegment_today("2026-11-11", 7, None, k=2, dim=2) and resegment_today(
        "2026-11-11", 1, previous, k=2, dim=2
    )
    weekly = [resegment_today(f"2026-11-{d:02d}", 7, previous, k=2, dim=2) for d in range(1, 15)]
    assert sum(weekly) == 2  # once a week


def test_align_to_previous_undoes_a_rotation_of_the_collaborative_block_only():
    rng = np.random.default_rng(0)
    users, collab, visual = 40, 6, 4
    before = UserEmbeddings(
        user_ids=np.array([f"u{i}" for i in range(users)]),
        embeddings=rng.normal(size=(users, collab + visual)).astype(np.float32),
        model_version="day1",
    )
    rotation, _ = np.linalg.qr(rng.normal(size=(collab, collab)))
    today = before.embeddings.copy()
    today[:, :collab] = today[:, :collab] @ rotation + rng.normal(0, 0.01, (users, collab))
    order = rng.permutation(users)  # rows in another order: users are matched by id, not position
    after = UserEmbeddings(user_ids=before.user_ids[order], embeddings=today[order], model_version="day2")

    aligned, alignment = align_to_previous(after, before, collab, "2026-11-10")
    assert alignment.to_ds == "2026-11-10" and alignment.shared_users == users
    assert alignment.residual_before > 0.5 and alignment.residual_after < 0.02
    back = aligned.embeddings[np.argsort(order)]
    np.testing.assert_allclose(back[:, :collab], before.embeddings[:, :collab], atol=0.05)
    np.testing.assert_array_equal(back[:, collab:], before.embeddings[:, collab:])  # visual block untouched

    few = UserEmbeddings(user_ids=after.user_ids[:5], embeddings=after.embeddings[:5], model_version="day2")
    unchanged, skipped = align_to_previous(few, before, collab, "2026-11-10")
    assert skipped.to_ds is None and unchanged is few  # 5 shared users cannot pin a 6-d rotation down


def test_run_users_imports_platform_embeddings(tmp_path):
    store = ObjectStore(str(tmp_path / "root"))
    logs = planted_logs(store)
    path = tmp_path / "platform.parquet"
    users = sorted(logs.user_group)
    vectors = [[float(logs.user_group[u]) * 4, 1.0] for u in users]
    pq.write_table(pa.table({"user_id": users, "embedding": vectors}), path)
    summary = run_users(store, logs.ds, SMALL.model_copy(update={"import_uri": str(path)}))
    assert summary.source == "imported" and summary.embedding_dim == 2
    segments = load_segments(store, logs.ds)
    truth = [logs.user_group[u] for u in segments.user_ids]
    assert adjusted_rand_score(truth, segments.segment_ids) == 1.0


def test_embedding_dim_leaves_room_for_the_collaborative_part():
    assert UsersConfig(embedding_dim=16).collab_dim == 16 - len(ATTRIBUTE_NAMES)
    with pytest.raises(ValueError, match="embedding_dim"):
        UsersConfig(embedding_dim=len(ATTRIBUTE_NAMES))
