"""Aesthetic reward, and a held-out aesthetic measure that is never trained on.

- **Production** (``backend="laion"``): the LAION aesthetic predictor v2 -- a CLIP ViT-L/14 image
  embedding, L2-normalized, into an MLP head (Linear(768, 1024), Dropout, Linear(1024, 128), Dropout,
  Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1)). The CLIP folder and the head's weights
  (the published ``.pth`` state dict, or safetensors) come from local paths in config; batched, float16
  on GPU when present.
- **Embedded default** (``backend="proxy"``): ``aesthetic_proxy``, a computational-aesthetics proxy
  from pixels. It is a proxy, not a measurement of human judgement. On covers resized to
  :data:`ANALYSIS_SIZE` (so sharpness is comparable across sizes), RGB and luma in [0, 1]:

  ===============  ========================================================  =================  ======
  term             raw measure                                               normalized to       weight
  ===============  ========================================================  =================  ======
  colorfulness     Hasler-Suesstrunk M on the 0-255 scale                    min(M / 110, 1)     0.30
  contrast         RMS contrast, std of luma                                 min(rms / 0.25, 1)  0.25
  sharpness        variance of the 4-neighbour Laplacian of luma             v / (v + 0.02)      0.25
  exposure         mean luma and share of clipped pixels (< 0.02 or > 0.98)  (1 - 2|mean - 0.5|)  0.20
                                                                             * (1 - clipped)
  ===============  ========================================================  =================  ======

  (110 is "extremely colourful" on Hasler and Suesstrunk's scale.) The proxy, in [0, 1], rewards
  vivid, contrasted, sharp, well-exposed covers, so it pulls against users who like dark, muted or
  soft covers: that tension is real and is reported, not tuned away.
- **Held-out measure** (:func:`composition_score`, evaluation only): the mean of the normalized
  entropy of the luma histogram (tonal richness, 32 bins) and visual balance (1 minus the distance of
  the gradient-energy centroid from the image centre, over half the diagonal). It shares no term with
  the proxy, so a generator that games the proxy does not automatically score here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from icg_core import layout
from icg_core.config import AestheticConfig
from icg_core.data.images import as_image_batch, read_images
from icg_core.rewards.common import (
    BuiltReward,
    RewardFn,
    RewardStats,
    finish,
    load_reward_model,
    save_reward_model,
)
from icg_core.rewards.relevance import ClipScorer
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

KIND = "aesthetic"
ANALYSIS_SIZE = 64
PROXY_WEIGHTS: dict[str, float] = {
    "colorfulness": 0.30,
    "contrast": 0.25,
    "sharpness": 0.25,
    "exposure": 0.20,
}
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_ENTROPY_BINS = 32


# ----------------------------------------------------------------------------- pixel measures
def _float_batch(images: Any) -> np.ndarray:
    return as_image_batch(images, ANALYSIS_SIZE).astype(np.float32) / 255.0


def proxy_components(images: Any) -> dict[str, np.ndarray]:
    """The four normalized proxy terms (table in the module docstring), each ``float32 [B]`` in [0, 1]."""
    x = torch.from_numpy(_float_batch(images)).permute(0, 3, 1, 2)
    return {name: value.numpy() for name, value in proxy_components_tensor(x).items()}


def proxy_components_tensor(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`proxy_components` as differentiable functions of ``float [B, 3, S, S]`` in [0, 1] at
    :data:`ANALYSIS_SIZE` (the clipped-pixel share of ``exposure`` is a count: no gradient flows through it)."""
    rgb = images * 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b

    def std(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).std(dim=1, correction=0)

    colorfulness = torch.hypot(std(rg), std(yb)) + 0.3 * torch.hypot(rg.mean(dim=(1, 2)), yb.mean(dim=(1, 2)))
    luma = torch.einsum("bchw,c->bhw", images, torch.as_tensor(_LUMA, device=images.device))
    laplacian = (
        4 * luma[:, 1:-1, 1:-1]
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    sharpness = laplacian.flatten(1).var(dim=1, correction=0)
    clipped = ((luma < 0.02) | (luma > 0.98)).float().mean(dim=(1, 2))
    return {
        "colorfulness": torch.clamp(colorfulness / 110.0, max=1.0),
        "contrast": torch.clamp(std(luma) / 0.25, max=1.0),
        "sharpness": sharpness / (sharpness + 0.02),
        "exposure": (1.0 - 2.0 * (luma.mean(dim=(1, 2)) - 0.5).abs()) * (1.0 - clipped),
    }


def aesthetic_proxy(images: Any) -> np.ndarray:
    """The embedded aesthetic proxy, ``float32 [B]`` in [0, 1]: weighted sum of :func:`proxy_components`."""
    return weighted_proxy(proxy_components(images)).astype(np.float32)


def weighted_proxy(components: Mapping[str, Any]) -> Any:
    """``sum(PROXY_WEIGHTS[name] * components[name])``: the proxy from its components (arrays or tensors)."""
    names = list(PROXY_WEIGHTS)
    total = PROXY_WEIGHTS[names[0]] * components[names[0]]
    for name in names[1:]:
        total = total + PROXY_WEIGHTS[name] * components[name]
    return total


def composition_score(images: Any) -> np.ndarray:
    """Held-out aesthetic measure, ``float32 [B]`` in [0, 1] (module docstring); never a training reward."""
    x = _float_batch(images)
    luma = x @ _LUMA
    bins = np.minimum((luma * _ENTROPY_BINS).astype(np.int64), _ENTROPY_BINS - 1).reshape(len(luma), -1)
    counts = np.stack([np.bincount(row, minlength=_ENTROPY_BINS) for row in bins]).astype(np.float64)
    p = counts / counts.sum(axis=1, keepdims=True)
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1) / np.log2(_ENTROPY_BINS)
    gy, gx = np.gradient(luma, axis=(1, 2))
    energy = np.hypot(gx, gy) + 1e-8
    size = luma.shape[1]
    coords = (np.arange(size) - (size - 1) / 2) / ((size - 1) / 2)  # [-1, 1] from the centre
    cy = (energy.sum(axis=2) * coords).sum(axis=1) / energy.sum(axis=(1, 2))
    cx = (energy.sum(axis=1) * coords).sum(axis=1) / energy.sum(axis=(1, 2))
    balance = 1.0 - np.hypot(cx, cy) / np.sqrt(2.0)
    return (0.5 * entropy + 0.5 * balance).astype(np.float32)


# ----------------------------------------------------------------------------- LAION predictor
class AestheticHead(nn.Module):
    """The LAION aesthetic predictor v2 MLP; parameter names match the published state dict (``layers.*``)."""

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """L2-normalized CLIP image embeddings ``[B, input_dim]`` -> scores ``[B]``."""
        return self.layers(embeddings).squeeze(-1)


def load_head_state(path: str) -> dict[str, torch.Tensor]:
    """Head weights from ``.safetensors`` or a ``.pth`` state dict (read with ``weights_only=True``: no code runs)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class LaionAestheticScorer:
    """CLIP image embedding -> L2 normalization -> :class:`AestheticHead`, batched.

    Args:
        clip_path: local CLIP folder (ViT-L/14 in production; any CLIPModel whose projection size
            matches the head).
        head: head weights (a path, see :func:`load_head_state`, or a state dict).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        batch_size: covers per forward pass.
    """

    def __init__(
        self,
        clip_path: str,
        head: str | Mapping[str, torch.Tensor],
        device: str = "auto",
        batch_size: int = 64,
    ) -> None:
        self.clip = ClipScorer(clip_path, device, batch_size)
        state = load_head_state(head) if isinstance(head, str) else dict(head)
        input_dim = int(state["layers.0.weight"].shape[1])
        projection = int(self.clip.model.config.projection_dim)
        if input_dim != projection:
            raise ValueError(
                f"aesthetic head expects {input_dim}-d embeddings but the CLIP model projects to {projection}"
            )
        self.head = AestheticHead(input_dim)
        self.head.load_state_dict(state)
        self.head.to(self.clip.device).eval()

    @torch.no_grad()
    def score(self, images: Any) -> np.ndarray:
        embeddings = self.clip.image_features(images).to(self.clip.device)  # already L2-normalized
        return self.head(embeddings).float().cpu().numpy()


# ----------------------------------------------------------------------------- rewards
def aesthetic_reward_fn(
    scorer: LaionAestheticScorer | None = None, stats: RewardStats | None = None
) -> RewardFn:
    """The aesthetic reward: the LAION predictor when ``scorer`` is given, else :func:`aesthetic_proxy`.

    ``prompts`` and ``metadata`` are unused; ``info`` holds the raw scores (and the proxy's terms).
    """

    def reward(
        images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if scorer is not None:
            raw = scorer.score(images)
            return finish(raw, stats, {"laion_aesthetic": raw})
        components = proxy_components(images)
        raw = weighted_proxy(components)
        return finish(raw, stats, {"aesthetic_proxy": np.asarray(raw, np.float32), **components})

    return reward


def composition_reward_fn() -> RewardFn:
    """:func:`composition_score` in the reward-fn shape, for held-out tracking (never a training reward)."""

    def measure(
        images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return finish(composition_score(images), None, {"composition": True})

    return measure


def _scorer(cfg: AestheticConfig) -> LaionAestheticScorer | None:
    if cfg.backend == "proxy":
        return None
    if not (cfg.clip_path and cfg.head_path):
        raise ValueError("aesthetic backend 'laion' needs clip_path and head_path")
    return LaionAestheticScorer(cfg.clip_path, cfg.head_path, cfg.device, cfg.batch_size)


def build_aesthetic_reward(
    store: ObjectStore, ds: str, cfg: AestheticConfig, version: str | None = None, max_images: int = 4000
) -> BuiltReward:
    """The aesthetic part of the rewards stage: statistics over the catalog's covers, saved as ``version``.

    The reference set is every catalog reference cover plus the covers shown in the window (at most
    ``max_images`` in all, the references first). Also records the held-out measure's statistics.
    """
    version = version or ds
    catalog = layout.CATALOG.read(store, ds)
    impressions = layout.IMPRESSIONS.read(store, ds)
    uris = list(
        dict.fromkeys(
            catalog.column("reference_image_uri").to_pylist()
            + sorted(set(impressions.column("cover_uri").to_pylist()))
        )
    )
    images = read_images(store, uris[:max_images], ANALYSIS_SIZE)
    scorer = _scorer(cfg)
    raw = scorer.score(images) if scorer is not None else aesthetic_proxy(images)
    stats = RewardStats.from_values(
        raw, f"{'LAION aesthetic' if scorer else 'aesthetic_proxy'} over catalog and logged covers"
    )
    heldout = composition_score(images)
    metrics = {
        "n_images": len(images),
        "heldout_measure": "composition_score",
        "heldout_stats": RewardStats.from_values(
            heldout, "composition_score over catalog and logged covers"
        ).to_dict(),
        "correlation_with_heldout": float(np.corrcoef(raw, heldout)[0, 1])
        if len(images) > 1
        else float("nan"),
    }
    modules = {"head": scorer.head} if scorer is not None else {}
    uri = save_reward_model(
        store,
        KIND,
        version,
        modules=modules,
        config=cfg.model_dump() | {"proxy_weights": PROXY_WEIGHTS},
        stats=stats,
        metrics=metrics,
    )
    log.info(
        "stage=rewards aesthetic backend=%s images=%d mean=%.4f std=%.4f",
        cfg.backend,
        len(images),
        stats.mean,
        stats.std,
    )
    return BuiltReward(KIND, version, uri, stats, metrics, scorer)


def load_aesthetic_reward_fn(
    store: ObjectStore, version: str = "latest", standardize: bool = True
) -> RewardFn:
    """The saved aesthetic reward of ``version`` (the LAION head is the saved copy, CLIP from ``clip_path``)."""
    saved = load_reward_model(store, KIND, version)
    settings = saved.settings
    scorer = None
    if settings.get("backend") == "laion":
        scorer = LaionAestheticScorer(
            settings["clip_path"],
            saved.states["head"],
            settings.get("device", "auto"),
            int(settings.get("batch_size", 64)),
        )
    return aesthetic_reward_fn(scorer, saved.stats if standardize else None)
