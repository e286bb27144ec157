"""MetaTokenEncoder on tiny LLaVA and Qwen2-VL checkpoints."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from PIL import Image

from icg_core.models.encoder import MetaTokenEncoder, content_hash
from tests.icg_core.models.conftest import FEATURE_DIM, META_TOKENS, TITLES, reference_images

FAMILIES = ("llava", "qwen2_vl")


@pytest.fixture(params=FAMILIES)
def encoder(request, tiny_vlm_dirs) -> MetaTokenEncoder:
    return MetaTokenEncoder(tiny_vlm_dirs[request.param], num_meta_tokens=META_TOKENS, seed=1)


def test_features_shape_and_finite(encoder):
    features = encoder(TITLES[:3], reference_images(3))
    assert features.shape == (3, META_TOKENS, FEATURE_DIM)
    assert torch.isfinite(features).all()
    # The meta tokens read the item: different titles/images give different features.
    assert not torch.allclose(features[0], features[1])


def test_image_inputs_accept_pil_and_bytes(encoder):
    array = reference_images(1)[0]
    image = Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with torch.no_grad():
        from_array = encoder([TITLES[0]], [array])
        from_pil = encoder([TITLES[0]], [image])
        from_bytes = encoder([TITLES[0]], [buf.getvalue()])
    assert torch.equal(from_array, from_pil) and torch.equal(from_array, from_bytes)


def test_features_do_not_depend_on_batch_padding(encoder):
    images = reference_images(4)
    with torch.no_grad():
        alone = encoder([TITLES[0]], images[:1])
        # TITLES[3] is much longer: TITLES[0] gets many left-pad tokens in this batch.
        batched = encoder([TITLES[0], TITLES[3]], [images[0], images[3]])
    assert encoder.prepare([TITLES[0], TITLES[3]], images[:2])["attention_mask"][0].eq(0).sum() > 10
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_only_meta_tokens_train_and_get_gradients(encoder):
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    assert trainable == ["meta_tokens"]
    assert not encoder.backbone.training
    encoder.train()
    assert encoder.training and not encoder.backbone.training  # backbone stays in eval mode
    features = encoder(TITLES[:2], reference_images(2))
    features.pow(2).mean().backward()
    assert encoder.meta_tokens.grad is not None and encoder.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.backbone.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_switches_on_with_only_lora_and_meta_trainable(family, tiny_vlm_dirs):
    encoder = MetaTokenEncoder(tiny_vlm_dirs[family], num_meta_tokens=META_TOKENS, lora_rank=4)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert "meta_tokens" in trainable
    lora = trainable - {"meta_tokens"}
    assert lora and all("lora_" in name and "language_model" in name for name in lora)
    features = encoder(TITLES[:2], reference_images(2))
    features.sum().backward()
    lora_b = [p for name, p in encoder.named_parameters() if "lora_B" in name]
    assert all(p.grad is not None for p in lora_b)
    # LoRA B starts at zero: at init the adapted encoder equals the plain one.
    plain = MetaTokenEncoder(tiny_vlm_dirs[family], num_meta_tokens=META_TOKENS)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(TITLES[:2], reference_images(2)), features.detach(), atol=1e-5, rtol=0
        )


def test_trainable_state_round_trip_and_version(tiny_vlm_dirs):
    path = tiny_vlm_dirs["llava"]
    first = MetaTokenEncoder(path, num_meta_tokens=META_TOKENS, seed=1)
    second = MetaTokenEncoder(path, num_meta_tokens=META_TOKENS, seed=2)
    assert first.encoder_version != second.encoder_version
    assert (
        first.encoder_version == MetaTokenEncoder(path, num_meta_tokens=META_TOKENS, seed=1).encoder_version
    )
    second.load_trainable_state_dict(first.trainable_state_dict())
    assert second.encoder_version == first.encoder_version
    with torch.no_grad():
        assert torch.equal(first(TITLES[:1], reference_images(1)), second(TITLES[:1], reference_images(1)))
    with pytest.raises(ValueError, match="trainable keys differ"):
        second.load_trainable_state_dict({"other": torch.zeros(1)})


@pytest.mark.parametrize("family", FAMILIES)
def test_version_does_not_depend_on_where_the_backbone_lies(family, tiny_vlm_dirs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_vlm_dirs[family], moved)
    here = MetaTokenEncoder(tiny_vlm_dirs[family], num_meta_tokens=META_TOKENS, seed=1)
    there = MetaTokenEncoder(moved, num_meta_tokens=META_TOKENS, seed=1)
    assert here.encoder_version == there.encoder_version


@pytest.mark.parametrize("family", FAMILIES)
def test_version_does_not_depend_on_the_precision_the_backbone_runs_at(family, tiny_vlm_dirs):
    """A generator trained on CPU (float32) must load on GPU workers running the VLM in half precision."""
    full = MetaTokenEncoder(tiny_vlm_dirs[family], num_meta_tokens=META_TOKENS, seed=1)
    half = MetaTokenEncoder(tiny_vlm_dirs[family], num_meta_tokens=META_TOKENS, seed=1, dtype=torch.bfloat16)
    half.load_trainable_state_dict(full.trainable_state_dict())  # as load_bundle does from a checkpoint
    assert half.backbone.dtype == torch.bfloat16
    assert full.encoder_version == half.encoder_version


def test_content_hash_is_stable_and_sensitive():
    base = content_hash("Title", b"\x89PNG...", "mte-1")
    assert base == content_hash("Title", b"\x89PNG...", "mte-1")
    assert len(base) == 64
    assert base != content_hash("Title2", b"\x89PNG...", "mte-1")
    assert base != content_hash("Title", b"\x89PNG..!", "mte-1")
    assert base != content_hash("Title", b"\x89PNG...", "mte-2")
    # Length prefixes: moving bytes between parts changes the hash.
    assert content_hash("ab", b"c", "v") != content_hash("a", b"bc", "v")
