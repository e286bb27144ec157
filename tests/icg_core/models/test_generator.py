"""CoverGenerator: full sampling runs on tiny SD1.5- and SDXL-type UNets driven by the ICG modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg_core.data.images import as_image_batch
from icg_core.models.conditioning import (
    AdapterConfig,
    ConditionAdapter,
    PersonalizationRefiner,
    RefinerConfig,
)
from icg_core.models.encoder import MetaTokenEncoder
from icg_core.models.generator import CoverGenerator, seed_for, to_pil
from tests.icg_core.models.conftest import CROSS_DIM, FEATURE_DIM, META_TOKENS, TITLES, reference_images

STEPS = 6


def adapter_for(kind: str) -> ConditionAdapter:
    torch.manual_seed(0)
    config = AdapterConfig(
        feature_dim=FEATURE_DIM,
        num_tokens=META_TOKENS,
        kind=kind,
        cross_attention_dim=CROSS_DIM,
        pooled_dim=CROSS_DIM,  # the tiny SDXL UNet's pooled width
        image_size=32,
        hidden_dim=32,
    )
    adapter = ConditionAdapter(config)
    with torch.no_grad():
        adapter.null_tokens.normal_()  # a "trained" null embedding, distinct from the conditional rows
    return adapter


@pytest.fixture(scope="module")
def features(tiny_vlm_dirs) -> torch.Tensor:
    """Refined meta-token features of 3 items for 3 different users."""
    encoder = MetaTokenEncoder(tiny_vlm_dirs["llava"], num_meta_tokens=META_TOKENS)
    refiner = PersonalizationRefiner(RefinerConfig(feature_dim=FEATURE_DIM, user_dim=8))
    with torch.no_grad():
        refiner.out.weight.copy_(0.5 * torch.eye(refiner.config.feature_dim))
        return refiner(encoder(TITLES[:3], reference_images(3)), torch.randn(3, 8))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_full_sampling_run_from_adapter_output(kind, scheduler, tiny_sd_dirs, features):
    generator = CoverGenerator(tiny_sd_dirs[kind])
    assert generator.kind == kind and generator.image_size == 32
    adapter = adapter_for(kind)
    with torch.no_grad():
        cond = adapter(features)
        null = adapter.null_conditioning(len(cond))
    images = generator.sample(
        cond, seeds=[1, 2, 3], steps=STEPS, guidance_scale=4.0, scheduler=scheduler, null_cond=null
    )
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert len({img.tobytes() for img in images}) == 3
    pils = to_pil(images)
    assert pils[0].size == (32, 32) and pils[0].mode == "RGB"
    # Guidance 1 runs the conditional branch only and needs no null conditioning.
    plain = generator.sample(cond, seeds=[1, 2, 3], steps=STEPS, guidance_scale=1.0, scheduler=scheduler)
    assert plain.shape == images.shape and not np.array_equal(plain, images)


def test_same_seeds_same_images_whatever_the_batch(tiny_sd_dirs, features):
    generator = CoverGenerator(tiny_sd_dirs["sdxl"])
    adapter = adapter_for("sdxl")
    with torch.no_grad():
        cond = adapter(features)
        null = adapter.null_conditioning(3)
    run = dict(steps=STEPS, guidance_scale=3.0, null_cond=null)
    first = generator.sample(cond, seeds=[7, 8, 9], **run)
    again = generator.sample(cond, seeds=[7, 8, 9], **run)
    assert np.array_equal(first, again)
    alone = generator.sample(
        cond.rows([1]), seeds=[8], steps=STEPS, guidance_scale=3.0, null_cond=null.rows([1])
    )
    reordered = generator.sample(
        cond.rows([2, 1]), seeds=[9, 8], steps=STEPS, guidance_scale=3.0, null_cond=null.rows([2, 1])
    )
    # Float kernels may differ in the last bit with batch size: at most one uint8 level apart.
    for other in (alone[0], reordered[1]):
        diff = np.abs(other.astype(int) - first[1].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01
    different_seed = generator.sample(
        cond.rows([1]), seeds=[10], steps=STEPS, guidance_scale=3.0, null_cond=null.rows([1])
    )
    assert np.abs(different_seed[0].astype(int) - first[1].astype(int)).mean() > 1


def test_sampling_rejects_mismatched_inputs(tiny_sd_dirs, features):
    generator = CoverGenerator(tiny_sd_dirs["sd15"])
    with torch.no_grad():
        cond = adapter_for("sd15")(features)
        sdxl_cond = adapter_for("sdxl")(features)
    with pytest.raises(ValueError, match="null_cond"):
        generator.sample(cond, seeds=[1, 2, 3], steps=2, guidance_scale=5.0)
    with pytest.raises(ValueError, match="seeds"):
        generator.sample(cond, seeds=[1], steps=2, guidance_scale=1.0)
    with pytest.raises(ValueError, match="sd15"):
        generator.sample(sdxl_cond, seeds=[1, 2, 3], steps=2, guidance_scale=1.0)


def test_encode_decode_shapes(tiny_sd_dirs):
    generator = CoverGenerator(tiny_sd_dirs["sd15"])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = generator.encode(images, torch.Generator().manual_seed(0))
        decoded = generator.decode(latents)
    assert latents.shape == (2, 4, 8, 8)
    assert decoded.shape == (2, 32, 32, 3) and decoded.dtype == np.uint8


def test_seed_for_is_stable_and_distinct():
    seed = seed_for("item-1", 3, "gen-abc")
    assert seed == seed_for("item-1", 3, "gen-abc")
    assert 0 <= seed < 2**63
    others = {
        seed_for("item-1", 4, "gen-abc"),
        seed_for("item-2", 3, "gen-abc"),
        seed_for("item-1", 3, "gen-abd"),
    }
    assert seed not in others and len(others) == 3


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_a_low_strength_stays_near_its_starting_latents(scheduler, tiny_sd_dirs, features):
    """Image to image: the less of the schedule is run, the closer the sample ends to where it began."""
    generator = CoverGenerator(tiny_sd_dirs["sd15"])
    with torch.no_grad():
        cond = adapter_for("sd15")(features)
    references = as_image_batch(reference_images(3), generator.image_size)
    start = generator.encode_images(references)
    assert start.shape == (3, 4, 8, 8)
    assert torch.equal(start, generator.encode_images(references))  # the posterior mean: no noise

    def distance(strength: float) -> float:
        latents = generator.sample(
            cond,
            seeds=[1, 2, 3],
            steps=10,
            guidance_scale=1.0,
            scheduler=scheduler,
            output_type="latent",
            init_latents=start,
            strength=strength,
        )
        return float((latents - start).pow(2).mean())

    near, far, noise = distance(0.2), distance(0.6), distance(1.0)
    assert distance(0.0) == 0.0  # no step to run: the starting latents themselves
    assert near < far < noise
    plain = generator.sample(
        cond, seeds=[1, 2, 3], steps=10, guidance_scale=1.0, scheduler=scheduler, output_type="latent"
    )
    assert noise == pytest.approx(float((plain - start).pow(2).mean()))  # strength 1: from pure noise
