"""Item-feature cache: the VLM runs once per item per encoder version, and only for what changed."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from icg_core import layout
from icg_core.data.schemas import conform
from icg_core.models.encoder import MetaTokenEncoder, content_hash
from icg_core.models.tiny import build_tiny_vlm
from icg_core.runtime import torch_threads
from icg_core.serving.features import (
    cached_item_features,
    compute_item_features,
    load_features,
    read_item_features,
)
from icg_core.storage import ObjectStore

TITLES = ["Nebula Orbit", "Harbor Wave", "Pine Grove", "Chess Puzzle", "Marathon Goal"]
META_TOKENS = 4


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    with torch_threads(1):  # tiny models: thread synchronization costs more than the ops
        yield


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "llava", "llava", TITLES, hidden_size=32)


class CountingEncoder(MetaTokenEncoder):
    """Records how many items each forward pass encodes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def forward(self, titles, images):
        self.calls.append(len(titles))
        return super().forward(titles, images)


@pytest.fixture
def encoder(vlm_dir) -> CountingEncoder:
    return CountingEncoder(vlm_dir, num_meta_tokens=META_TOKENS, seed=0).eval()


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def catalog(store: ObjectStore, titles: list[str]) -> pa.Table:
    uris = [store.put_bytes(f"raw/images/reference/i{i}.png", _png(i)) for i in range(len(titles))]
    return pa.table(
        {"item_id": [f"i{i}" for i in range(len(titles))], "title": titles, "reference_image_uri": uris}
    )


def test_second_run_makes_no_forward_call_and_one_changed_title_makes_one(tmp_path, encoder) -> None:
    store = ObjectStore(str(tmp_path))
    items = catalog(store, TITLES)
    first = compute_item_features(encoder, items, store, batch_size=2)
    assert encoder.calls == [2, 2, 1] and (first.computed, first.reused) == (5, 0)

    encoder.calls.clear()
    second = compute_item_features(encoder, items, store, batch_size=2)
    assert encoder.calls == [] and (second.computed, second.reused, second.forward_calls) == (0, 5, 0)
    assert second.table.equals(first.table)

    retitled = items.set_column(1, "title", pa.array(["Comet Galaxy", *TITLES[1:]]))
    third = compute_item_features(encoder, retitled, store, batch_size=2)
    assert encoder.calls == [1] and third.computed == 1
    assert third.table.column("content_hash")[0] != first.table.column("content_hash")[0]
    assert third.table.column("content_hash")[1:].equals(first.table.column("content_hash")[1:])


def test_a_fully_cached_day_is_answered_without_the_encoder(tmp_path, encoder) -> None:
    # The features stage asks this before starting Ray: a day with nothing new needs no workers.
    store = ObjectStore(str(tmp_path))
    items = catalog(store, TITLES)
    version = encoder.encoder_version
    assert cached_item_features(store, items, version) is None
    computed = compute_item_features(encoder, items, store, batch_size=2)
    assert cached_item_features(store, items, version).equals(computed.table)
    retitled = items.set_column(1, "title", pa.array(["Comet Galaxy", *TITLES[1:]]))
    assert cached_item_features(store, retitled, version) is None
    assert cached_item_features(store, items, "another-encoder") is None


def test_new_encoder_version_recomputes_everything(tmp_path, encoder) -> None:
    store = ObjectStore(str(tmp_path))
    items = catalog(store, TITLES[:3])
    before = compute_item_features(encoder, items, store)
    with torch.no_grad():
        encoder.meta_tokens.add_(0.1)  # stage 1 moved the meta tokens: a new feature function
    encoder.calls.clear()
    after = compute_item_features(encoder, items, store)
    assert after.encoder_version != before.encoder_version
    assert encoder.calls == [3] and after.computed == 3
    assert all(
        uri.startswith(f"features/{after.encoder_version}/")
        for uri in after.table.column("features_uri").to_pylist()
    )


def test_cached_features_are_the_encoder_output_keyed_by_content_hash(tmp_path, encoder) -> None:
    store = ObjectStore(str(tmp_path))
    items = catalog(store, TITLES[:3])
    result = compute_item_features(encoder, items, store, ds="2026-11-15")
    version = encoder.encoder_version
    for row, title in enumerate(TITLES[:3]):
        expected_hash = content_hash(title, _png(row), version)
        assert result.table.column("content_hash")[row].as_py() == expected_hash
        assert store.exists(layout.feature(version, expected_hash))
    cached = load_features(store, result.table.column("features_uri").to_pylist())
    with torch.no_grad():
        direct = encoder(TITLES[:3], [Image.open(io.BytesIO(_png(i))) for i in range(3)])
    assert cached.shape == (3, META_TOKENS, 32)
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-5)
    committed = read_item_features(store, "2026-11-15")
    assert committed.equals(conform("item_features", result.table))


def test_identical_items_are_encoded_once(tmp_path, encoder) -> None:
    store = ObjectStore(str(tmp_path))
    uri = store.put_bytes("raw/images/reference/same.png", _png(7))
    items = pa.table(
        {"item_id": ["a", "b"], "title": ["Same Title", "Same Title"], "reference_image_uri": [uri, uri]}
    )
    result = compute_item_features(encoder, items, store)
    assert encoder.calls == [1] and (result.computed, result.reused) == (1, 1)
    assert result.table.column("features_uri")[0] == result.table.column("features_uri")[1]
