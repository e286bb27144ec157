"""From item features to diffusion conditioning (docs/architecture.md, "The method").

``PersonalizationRefiner`` lets a user (or segment centroid) embedding refine the meta-token features;
``ConditionAdapter`` maps (refined) features to what a Stable Diffusion UNet takes in place of the text
encoder's output: ``encoder_hidden_states`` and, for SDXL, the pooled embedding and the 6 time ids.

The null user is exact, not approximate: rows without a user skip the user branch entirely, so the
non-personalized generator is the same function whatever the refiner has learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class RefinerConfig:
    feature_dim: int  # d_mllm, width of the meta-token features
    user_dim: int  # width of a user embedding / segment centroid
    num_layers: int = 1  # transformer layers over [user token; meta tokens]
    num_heads: int = 4  # attention heads (must divide feature_dim)
    ff_mult: int = 2  # feed-forward width multiple of feature_dim
    dropout: float = 0.0  # attention / feed-forward dropout


@dataclass
class AdapterConfig:
    feature_dim: int  # d_mllm, width of the (refined) meta-token features
    num_tokens: int = 32  # N, meta tokens in = conditioning tokens out
    kind: Literal["sd15", "sdxl"] = "sd15"  # which UNet conditioning to produce
    cross_attention_dim: int = 768  # UNet encoder_hidden_states width: 768 SD1.5, 2048 SDXL
    pooled_dim: int = 1280  # SDXL pooled text embedding width (added_cond_kwargs text_embeds)
    image_size: int = 1024  # SDXL time ids: original = target size (image_size, image_size), crop (0, 0)
    hidden_dim: int = 256  # adapter transformer width
    num_layers: int = 2  # adapter transformer layers
    num_heads: int = 4  # adapter attention heads (must divide hidden_dim)
    dropout: float = 0.0  # adapter dropout


@dataclass
class Conditioning:
    """What the UNet is conditioned on, for B rows.

    Attributes:
        encoder_hidden_states: [B, N, cross_attention_dim].
        pooled_embeds: [B, pooled_dim] for SDXL-type UNets, else None.
        time_ids: [B, 6] for SDXL-type UNets, else None.
    """

    encoder_hidden_states: torch.Tensor
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def _map(self, fn) -> Conditioning:
        return Conditioning(
            fn(self.encoder_hidden_states),
            None if self.pooled_embeds is None else fn(self.pooled_embeds),
            None if self.time_ids is None else fn(self.time_ids),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> Conditioning:
        return self._map(lambda t: t.detach())

    def rows(self, index: torch.Tensor | slice | list[int]) -> Conditioning:
        """The conditioning of the selected rows."""
        return self._map(lambda t: t[index])

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Rows of several conditionings stacked (all of one kind)."""
        pooled = [p.pooled_embeds for p in parts if p.pooled_embeds is not None]
        time_ids = [p.time_ids for p in parts if p.time_ids is not None]
        return Conditioning(
            torch.cat([p.encoder_hidden_states for p in parts]),
            torch.cat(pooled) if pooled else None,
            torch.cat(time_ids) if time_ids else None,
        )

    def unet_kwargs(self) -> dict:
        """Keyword arguments for ``UNet2DConditionModel.forward`` (besides sample and timestep)."""
        kwargs: dict = {"encoder_hidden_states": self.encoder_hidden_states}
        if self.pooled_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled_embeds, "time_ids": self.time_ids}
        return kwargs


def _transformer(width: int, layers: int, heads: int, ff_mult: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=width,
        nhead=heads,
        dim_feedforward=width * ff_mult,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,  # pre-norm: stable from a random start with small learning rates
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class PersonalizationRefiner(nn.Module):
    """User-conditioned refinement of meta-token features, exact identity for the null user.

    A user token (projected embedding) is prepended to the meta tokens and a small transformer reads
    both. The user's effect is the difference between the meta positions' output with this user's
    token and with the zero user's: ``delta = T([p(u); f]) - T([p(0); f])``, exactly zero for the
    zero user and free of anything every user shares. A zero-initialized linear map ``out`` turns
    it into the offset added to the features, so training starts from the non-personalized features
    and its first gradient (``dL/d offset`` x ``delta``) can already move each user in any feature
    direction. (A per-channel gate on the transformer's output, the first design, could only rescale
    channels; it mostly learned a shared rescaling of the features and left segments alike.)
    Rows whose user is null return the input unchanged (selected, not computed as ~0).
    """

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        self.user_proj = nn.Sequential(
            nn.Linear(config.user_dim, config.feature_dim),
            nn.GELU(),
            nn.Linear(config.feature_dim, config.feature_dim),
        )
        self.transformer = _transformer(
            config.feature_dim, config.num_layers, config.num_heads, config.ff_mult, config.dropout
        )
        self.out = nn.Linear(
            config.feature_dim, config.feature_dim, bias=False
        )  # no bias: zero user = identity
        nn.init.zeros_(self.out.weight)

    def forward(
        self, features: torch.Tensor, user: torch.Tensor | None = None, user_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Refine features for users.

        Args:
            features: [B, N, d] meta-token features.
            user: [B, u] user embeddings or segment centroids; None = null user for every row.
            user_mask: [B] bool, False marks a null-user row (its user values are ignored); None = all real.

        Returns:
            [B, N, d] refined features; null-user rows are ``features`` exactly.
        """
        if user is None:
            return features
        if user_mask is not None and not bool(user_mask.any()):
            return features
        user = user.to(features.dtype)
        if user_mask is not None:  # null rows may carry placeholders (NaN): keep them out of the math
            user = torch.where(user_mask.to(torch.bool).view(-1, 1), user, torch.zeros_like(user))
        tokens = self.user_proj(torch.cat([user, torch.zeros_like(user)])).unsqueeze(1)  # [2B, 1, d]
        hidden = self.transformer(torch.cat([tokens, features.repeat(2, 1, 1)], dim=1))[:, 1:, :]
        with_user, with_zero_user = hidden.chunk(2)
        refined = features + self.out(with_user - with_zero_user)
        if user_mask is None:
            return refined
        return torch.where(user_mask.to(torch.bool).view(-1, 1, 1), refined, features)


class ConditionAdapter(nn.Module):
    """Small transformer + projections: features [B, N, d] -> :class:`Conditioning` for the UNet."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        if config.kind not in ("sd15", "sdxl"):
            raise ValueError(f"unknown adapter kind {config.kind!r} (use 'sd15' or 'sdxl')")
        self.config = config
        self.in_proj = nn.Linear(config.feature_dim, config.hidden_dim)
        self.positions = nn.Parameter(torch.randn(config.num_tokens, config.hidden_dim) * 0.02)
        self.transformer = _transformer(
            config.hidden_dim, config.num_layers, config.num_heads, 4, config.dropout
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.out_proj = nn.Linear(config.hidden_dim, config.cross_attention_dim)
        # The unconditional branch of classifier-free guidance, learned by condition dropout in training.
        self.null_tokens = nn.Parameter(torch.zeros(config.num_tokens, config.cross_attention_dim))
        if config.kind == "sdxl":
            self.pooled_proj = nn.Linear(config.hidden_dim, config.pooled_dim)
            self.null_pooled = nn.Parameter(torch.zeros(config.pooled_dim))

    def _time_ids(self, batch: int, reference: torch.Tensor) -> torch.Tensor | None:
        if self.config.kind != "sdxl":
            return None
        size = float(self.config.image_size)
        row = torch.tensor([size, size, 0.0, 0.0, size, size], device=reference.device, dtype=reference.dtype)
        return row.expand(batch, 6).clone()

    def forward(self, features: torch.Tensor) -> Conditioning:
        """Map features to UNet conditioning.

        Args:
            features: [B, N, d] (refined) meta-token features, N == config.num_tokens.

        Returns:
            Conditioning with encoder_hidden_states [B, N, cross_attention_dim] (+ SDXL pooled [B, pooled_dim]
            and time_ids [B, 6]).
        """
        if features.shape[1] != self.config.num_tokens:
            raise ValueError(f"expected {self.config.num_tokens} tokens, got {features.shape[1]}")
        hidden = self.in_proj(features.to(self.in_proj.weight.dtype)) + self.positions
        hidden = self.norm(self.transformer(hidden))
        states = self.out_proj(hidden)
        if self.config.kind != "sdxl":
            return Conditioning(states)
        pooled = self.pooled_proj(hidden.mean(dim=1))
        return Conditioning(states, pooled, self._time_ids(states.shape[0], states))

    def null_conditioning(self, batch: int) -> Conditioning:
        """The learned unconditional conditioning, repeated for ``batch`` rows (same shapes as forward)."""
        states = self.null_tokens.unsqueeze(0).expand(batch, -1, -1)
        if self.config.kind != "sdxl":
            return Conditioning(states)
        pooled = self.null_pooled.unsqueeze(0).expand(batch, -1)
        return Conditioning(states, pooled, self._time_ids(batch, states))

    def drop_to_null(self, cond: Conditioning, drop: torch.Tensor) -> Conditioning:
        """Replace rows where ``drop`` [B] is True by the null conditioning (condition dropout for CFG)."""
        null = self.null_conditioning(len(cond))
        mask = drop.to(torch.bool)

        def pick(real: torch.Tensor | None, empty: torch.Tensor | None) -> torch.Tensor | None:
            if real is None or empty is None:
                return real
            return torch.where(mask.view(-1, *([1] * (real.dim() - 1))), empty.to(real.dtype), real)

        hidden = pick(cond.encoder_hidden_states, null.encoder_hidden_states)
        assert hidden is not None  # every conditioning has hidden states
        return Conditioning(
            hidden,
            pick(cond.pooled_embeds, null.pooled_embeds),
            cond.time_ids,
        )
