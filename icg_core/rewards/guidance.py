"""The multi-reward R as a differentiable function of decoded covers, for reward-guided sampling.

``R = w_a * aesthetic + w_r * relevance + w_p * preference``, each term standardized by the same
statistics as its reward fn (so R here and R from the reward fns agree up to resizing), written in
torch so its gradient can steer a cover's latent (:mod:`icg_core.serving.policy`):

- preference: :meth:`PreferenceModel.click_probability_tensor` for the segment centroid;
- relevance: :meth:`RelevanceModel.score_tensor` against the item title (embedded dual encoder);
- aesthetic: :func:`icg_core.rewards.aesthetic.proxy_components_tensor` (embedded proxy).

Production backends without a gradient path here (the LAION head behind CLIP, the CLIP relevance
scorer) leave their term out of the guidance; the reward fns still judge the final covers with them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from icg_core.config import RewardWeights
from icg_core.rewards.aesthetic import ANALYSIS_SIZE, proxy_components_tensor, weighted_proxy
from icg_core.rewards.common import RewardStats
from icg_core.rewards.preference import PreferenceModel
from icg_core.rewards.relevance import RelevanceModel

log = logging.getLogger(__name__)


@dataclass
class GuidanceReward:
    """The standardized reward terms of covers, differentiable in their pixels (R weights them).

    Attributes:
        preference: the click model (its ``stats`` standardize the term).
        relevance: the dual encoder, or None (term left out).
        aesthetic_stats: statistics of the aesthetic proxy, or None (term left out: another backend).
        weights: ``w_a``, ``w_r``, ``w_p``.
    """

    preference: PreferenceModel
    relevance: RelevanceModel | None
    aesthetic_stats: RewardStats | None
    weights: RewardWeights

    def title_embeddings(self, titles: Sequence[str]) -> torch.Tensor | None:
        """Unit title embeddings ``[B, E]`` the relevance term compares covers with (None without it).

        Computed whatever relevance's weight in R: the term also serves as a guard of the steer."""
        if self.relevance is None:
            return None
        return torch.from_numpy(self.relevance.text_embeddings(titles))

    def terms(
        self, images: torch.Tensor, users: torch.Tensor, title_embeddings: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Each standardized reward ``[B]`` (unweighted) of covers ``float [B, 3, H, W]`` in [0, 1].

        Args:
            images: decoded covers (gradients flow back through them).
            users: segment centroids (or user embeddings), one per cover.
            title_embeddings: :meth:`title_embeddings` of the covers' titles (None: no relevance term).
        """
        stats = self.preference.stats
        if stats is None:
            raise ValueError("reward guidance needs a preference model with standardization statistics")
        out = {
            "preference": (self.preference.click_probability_tensor(users, images) - stats.mean) / stats.std
        }
        relevance = self.relevance
        if title_embeddings is not None and relevance is not None and relevance.stats is not None:
            cosine = relevance.score_tensor(images, title_embeddings.to(images.device))
            out["relevance"] = (cosine - relevance.stats.mean) / relevance.stats.std
        if self.aesthetic_stats is not None:
            analysed = images
            if images.shape[-1] != ANALYSIS_SIZE:
                analysed = torch.nn.functional.interpolate(
                    images, size=(ANALYSIS_SIZE, ANALYSIS_SIZE), mode="bilinear", antialias=True
                )
            components = proxy_components_tensor(analysed)
            proxy = weighted_proxy(components)
            out["aesthetic"] = (proxy - self.aesthetic_stats.mean) / self.aesthetic_stats.std
        return out
