"""PersonalizationRefiner (exact null user) and ConditionAdapter (SD1.5 / SDXL shapes, null conditioning)."""

from __future__ import annotations

import pytest
import torch

from icg_core.models.conditioning import (
    AdapterConfig,
    ConditionAdapter,
    Conditioning,
    PersonalizationRefiner,
    RefinerConfig,
)

B, N, D, U = 3, 8, 64, 16


@pytest.fixture
def refiner() -> PersonalizationRefiner:
    torch.manual_seed(0)
    module = PersonalizationRefiner(RefinerConfig(feature_dim=D, user_dim=U))
    with torch.no_grad():
        module.out.weight.copy_(0.5 * torch.eye(D))  # as if trained: the user branch now changes the features
    return module


def test_null_user_is_exact_identity(refiner):
    features = torch.randn(B, N, D)
    assert torch.equal(refiner(features, None), features)
    users = torch.randn(B, U)
    assert torch.equal(refiner(features, users, torch.zeros(B, dtype=torch.bool)), features)


def test_mixed_batch_null_rows_unchanged_user_rows_refined(refiner):
    features = torch.randn(B, N, D)
    users = torch.randn(B, U)
    users[1] = float("nan")  # a null row's placeholder must not leak into the math
    mask = torch.tensor([True, False, True])
    out = refiner(features, users, mask)
    assert torch.equal(out[1], features[1])
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], features[0]) and not torch.allclose(out[2], features[2])
    # A user row's output does not depend on the other rows.
    alone = refiner(features[:1], users[:1])
    torch.testing.assert_close(out[:1], alone, atol=1e-6, rtol=0)


def test_zero_user_is_identity_and_only_user_differences_move_features(refiner):
    features = torch.randn(B, N, D)
    torch.testing.assert_close(refiner(features, torch.zeros(B, U)), features, atol=1e-6, rtol=0)
    users = torch.randn(B, U)
    offsets = refiner(features, users) - features
    assert offsets.abs().mean() > 1e-3
    # Another row's user, same features: another offset (the offset is a function of the user).
    swapped = refiner(features, users.roll(1, dims=0)) - features
    assert not torch.allclose(offsets, swapped, atol=1e-4)


def test_refiner_starts_as_identity_and_its_output_map_learns():
    module = PersonalizationRefiner(RefinerConfig(feature_dim=D, user_dim=U))
    features = torch.randn(B, N, D)
    out = module(features, torch.randn(B, U))
    assert torch.equal(out, features)  # zero output map at init
    (out * torch.randn_like(out)).sum().backward()
    assert module.out.weight.grad is not None and module.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("kind", "cross_dim"), [("sd15", 768), ("sdxl", 2048)])
def test_adapter_shapes(kind, cross_dim):
    config = AdapterConfig(
        feature_dim=D, num_tokens=N, kind=kind, cross_attention_dim=cross_dim, pooled_dim=1280, hidden_dim=32
    )
    adapter = ConditionAdapter(config)
    cond = adapter(torch.randn(B, N, D))
    null = adapter.null_conditioning(B)
    for c in (cond, null):
        assert c.encoder_hidden_states.shape == (B, N, cross_dim)
        if kind == "sdxl":
            assert c.pooled_embeds.shape == (B, 1280)
            assert c.time_ids.shape == (B, 6)
            assert c.time_ids[0].tolist() == [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]
            assert set(c.unet_kwargs()["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
        else:
            assert c.pooled_embeds is None and c.time_ids is None
            assert set(c.unet_kwargs()) == {"encoder_hidden_states"}
    with pytest.raises(ValueError, match="tokens"):
        adapter(torch.randn(B, N + 1, D))


def test_drop_to_null_replaces_only_dropped_rows():
    adapter = ConditionAdapter(
        AdapterConfig(
            feature_dim=D, num_tokens=N, kind="sdxl", cross_attention_dim=32, pooled_dim=24, hidden_dim=32
        )
    )
    with torch.no_grad():
        adapter.null_tokens.normal_()
        adapter.null_pooled.normal_()
    cond = adapter(torch.randn(B, N, D))
    dropped = adapter.drop_to_null(cond, torch.tensor([False, True, False]))
    null = adapter.null_conditioning(1)
    assert torch.equal(dropped.encoder_hidden_states[1], null.encoder_hidden_states[0])
    assert torch.equal(dropped.pooled_embeds[1], null.pooled_embeds[0])
    assert torch.equal(dropped.encoder_hidden_states[0], cond.encoder_hidden_states[0])
    both = Conditioning.cat([cond, null])
    assert len(both) == B + 1 and torch.equal(both.rows([B]).pooled_embeds, null.pooled_embeds)
