"""The diffusion math both training stages share."""

from __future__ import annotations

import pytest
import torch

from icg_core.training.diffusion import detail_of, flatten_optimizer, min_snr_weight, unflatten_optimizer


def test_detail_of_drops_the_block_means_and_keeps_the_pattern() -> None:
    g = torch.Generator().manual_seed(0)
    look = torch.randn(2, 4, 2, 2, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4).expand(2, 4, 8, 8)  # zero mean per block
    torch.testing.assert_close(detail_of(look, 4), torch.zeros_like(look))
    torch.testing.assert_close(detail_of(look + pattern, 4), pattern)
    whole = detail_of(look, 16)  # larger than the latents: only the global mean goes
    torch.testing.assert_close(whole, look - look.mean(dim=(2, 3), keepdim=True))
    with pytest.raises(ValueError, match="detail pool"):
        detail_of(look, 3)


def test_min_snr_weights_cap_the_easy_timesteps_only() -> None:
    alphas = torch.linspace(0.999, 0.001, 1000)
    timesteps = torch.tensor([0, 500, 999])
    weights = min_snr_weight(alphas, timesteps, "epsilon", gamma=5.0)
    snr = alphas[timesteps] / (1 - alphas[timesteps])
    torch.testing.assert_close(weights, torch.clamp(snr, max=5.0) / snr)
    assert weights[0] < 1.0 and weights[2] == 1.0  # low noise (high SNR) down-weighted, high noise untouched


def test_optimizer_state_survives_flattening() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.full((3,), 0.5)
    optimizer.step()
    tensors, groups = flatten_optimizer(optimizer.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    restored.load_state_dict(unflatten_optimizer(tensors, groups))
    for key, value in optimizer.state_dict()["state"][0].items():
        torch.testing.assert_close(
            torch.as_tensor(restored.state_dict()["state"][0][key]), torch.as_tensor(value)
        )
