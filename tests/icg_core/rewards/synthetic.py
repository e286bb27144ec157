"""Tiny planted logs for the users and reward tests: validated tables + PNG covers, built in a few ms.

Two taste groups: group 0 clicks bright covers, group 1 dark ones (a planted visual preference).
Items come in four patterns (the "category"), whose word appears in the title, so a relevance model
can learn pattern <-> word. Covers of an item are brightness variants of its reference.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from icg_core.storage import ObjectStore

PATTERNS = ("stripes", "rings", "checks", "dots")
FILLER = ("alpha", "bravo", "delta", "echo", "lima", "oscar", "tango", "zulu")
START = dt.date(2026, 11, 1)


def pattern_image(pattern: str, color: np.ndarray, brightness: float, size: int = 32) -> np.ndarray:
    """uint8 [size, size, 3]: a two-tone ``pattern`` in ``color``, scaled by ``brightness``."""
    y, x = np.mgrid[0:size, 0:size] / size
    if pattern == "stripes":
        mask = (y * 6) % 1 < 0.5
    elif pattern == "rings":
        mask = (np.hypot(x - 0.5, y - 0.5) * 8) % 1 < 0.5
    elif pattern == "checks":
        mask = ((x * 4).astype(int) + (y * 4).astype(int)) % 2 == 0
    else:
        mask = np.hypot((x * 5) % 1 - 0.5, (y * 5) % 1 - 0.5) < 0.25
    image = np.where(mask[..., None], color, 255 - color) * brightness
    return np.clip(image, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class PlantedLogs:
    ds: str
    user_group: dict[str, int]  # user_id -> planted taste group
    item_pattern: dict[str, str]
    impressions: pa.Table
    catalog: pa.Table


def planted_logs(
    store: ObjectStore,
    *,
    n_users: int = 60,
    n_items: int = 24,
    variants: int = 4,
    days: int = 6,
    per_day: int = 400,
    strength: float = 3.0,
    seed: int = 0,
    log_seed: int | None = None,
    ds: str | None = None,
) -> PlantedLogs:
    """Write a validated catalog + impressions window (``days`` days before ``ds``) and the covers.

    Clicks: ``p = sigmoid(-0.8 + strength * sign(user group) * (brightness - 0.7))``; ``strength=0``
    gives clicks independent of the cover. ``seed`` draws items and users, ``log_seed`` (default
    ``seed``) the impressions, so two windows of the same users can be drawn.
    """
    rng = np.random.default_rng(seed)
    ds = ds or (START + dt.timedelta(days=days)).isoformat()
    run_day = dt.date.fromisoformat(ds)
    item_ids = [f"item_{i:03d}" for i in range(n_items)]
    patterns = [PATTERNS[i % len(PATTERNS)] for i in range(n_items)]
    levels = np.linspace(0.45, 0.95, variants)
    cover_uris, cover_brightness, reference_uris, titles = [], [], [], []
    for item, pattern in zip(item_ids, patterns, strict=True):
        color = rng.integers(40, 216, 3)
        reference_uris.append(store.put_bytes(f"img/{item}/ref.png", png(pattern_image(pattern, color, 0.7))))
        words = rng.choice(FILLER, 2, replace=False)
        titles.append(f"{words[0]} {pattern} {words[1]}")
        for k, level in enumerate(levels):
            cover_uris.append(
                store.put_bytes(f"img/{item}/{k}.png", png(pattern_image(pattern, color, level)))
            )
            cover_brightness.append(level)
    user_ids = [f"user_{u:03d}" for u in range(n_users)]
    group = rng.integers(0, 2, n_users)
    rng = np.random.default_rng([seed, seed if log_seed is None else log_seed, 1])
    rows = {"user_id": [], "item_id": [], "cover_uri": [], "shown_at": [], "clicked": []}
    for day in range(days):
        date = run_day - dt.timedelta(days=days - day)
        users = rng.integers(n_users, size=per_day)
        covers = rng.integers(len(cover_uris), size=per_day)
        sign = np.where(group[users] == 0, 1.0, -1.0)
        logit = -0.8 + strength * sign * (np.asarray(cover_brightness)[covers] - 0.7)
        clicked = rng.random(per_day) < 1 / (1 + np.exp(-logit))
        seconds = np.sort(rng.uniform(0, 86000, per_day))
        base = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
        rows["user_id"] += [user_ids[u] for u in users]
        rows["item_id"] += [item_ids[c // variants] for c in covers]
        rows["cover_uri"] += [cover_uris[c] for c in covers]
        rows["shown_at"] += [base + dt.timedelta(seconds=float(s)) for s in seconds]
        rows["clicked"] += clicked.tolist()
    impressions = pa.table({**rows, "shown_at": pa.array(rows["shown_at"], pa.timestamp("us", tz="UTC"))})
    catalog = pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "category": patterns,
            "reference_image_uri": reference_uris,
            "updated_at": pa.array(
                [dt.datetime(2026, 10, 1, tzinfo=dt.UTC)] * n_items, pa.timestamp("us", tz="UTC")
            ),
        }
    )
    store.write_table("impressions", impressions, ds=ds, area="validated")
    store.write_table("catalog_items", catalog, ds=ds, area="validated")
    return PlantedLogs(
        ds=ds,
        user_group={u: int(g) for u, g in zip(user_ids, group, strict=True)},
        item_pattern=dict(zip(item_ids, patterns, strict=True)),
        impressions=impressions,
        catalog=catalog,
    )


def bag_of_words_encoder(vocabulary: tuple[str, ...] = PATTERNS + FILLER):
    """A fast stand-in title encoder for tests: normalized word counts over ``vocabulary``."""
    index = {w: i for i, w in enumerate(vocabulary)}

    def encode(titles):
        out = np.zeros((len(titles), len(vocabulary)), np.float32)
        for row, title in enumerate(titles):
            for word in title.lower().split():
                if word in index:
                    out[row, index[word]] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

    return encode


def build_tiny_clip(out_dir, projection_dim: int = 16, image_size: int = 32, seed: int = 0):
    """A tiny random ``CLIPModel`` + tokenizer + image processor folder, loadable offline like a real one."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    from icg_core.models.tiny import train_bpe_tokenizer

    raw = train_bpe_tokenizer(
        [f"{a} {p} {b}" for a in FILLER for p in PATTERNS for b in FILLER[:2]], ("<pad>", "<s>", "</s>"), 300
    )
    raw.post_processor = TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", raw.token_to_id("<s>")), ("</s>", raw.token_to_id("</s>"))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out_dir)
    return str(out_dir)
