"""Bootstrap: the base checkpoints and a stage-1 generator, from one validated day of data.

Embedded (``models.vlm_path`` / ``models.sd_path`` unset), phase by phase:

1. data: the validated catalog of ``ds``, split by item_id hash; training items' covers are their
   reference plus the variants their validated impressions show;
2. vlm: a tiny LLaVA-type model with a tokenizer trained on the training titles, given a
   captioning warm-up, stored as ``models/base-vlm/<version>/``;
3. vae: the tiny SD checkpoint's VAE trained on the training covers (``models/<generator>-vae/``);
4. stage1: UNet + meta tokens + refiner + adapter (:mod:`icg_core.training.stage1`), resumable;
5. save: the trained diffusers folder as ``models/base-sd/<version>/`` and our modules as
   ``models/<generator>/<version>/`` (``_latest`` moves);
6. features: the item-feature cache for the whole catalog, with the final encoder;
7. contact_sheet: generated covers next to the reference covers of held-out items, with a JSON
   summary (timings, loss curves), under ``reports/bootstrap/``.

With real checkpoints (``models.vlm_path`` / ``models.sd_path`` set) the builds, the VLM warm-up
and (unless ``stage1.train_vae`` / ``train_unet`` say otherwise) VAE and UNet training are skipped.

Versions are content hashes of the recipe (config) and the training data, so a rerun with the same
inputs finds every phase done and only refreshes features and reports; an interrupted run resumes
stage 1 from its last saved state. Base model folders live in the object store; for an S3 root
they are downloaded once into ``models.cache_dir`` to be loaded (see :mod:`icg_core.models.bundle`).
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image, ImageDraw

from icg_core import layout
from icg_core.config import ICGConfig, ModelsConfig, recipe_digest
from icg_core.data.images import decode_image
from icg_core.models.bundle import (
    BASE_SD,
    BASE_VLM,
    ICGBundle,
    build_bundle,
    load_bundle,
    model_dir_exists,
    put_model_dir,
    save_bundle,
)
from icg_core.models.checkpoint import checkpoint_exists, load_module_checkpoint, save_module_checkpoint
from icg_core.models.generator import seed_for
from icg_core.models.tiny import build_tiny_sd, build_tiny_vlm
from icg_core.runtime import torch_threads
from icg_core.serving.features import compute_item_features, load_features
from icg_core.storage import ObjectStore
from icg_core.training.base import train_vae, warm_up_vlm, warmup_set
from icg_core.training.data import (
    CatalogCovers,
    data_fingerprint,
    latest_validated_ds,
    load_catalog_covers,
    read_catalog,
    split_items,
    to_square,
)
from icg_core.training.stage1 import STATE_SUFFIX, Stage1Trainer, make_stage1_data

log = logging.getLogger(__name__)

SHEET_SAMPLES = 2  # generated covers shown per item, next to its reference
SHEET_COLUMNS = 4  # items per contact-sheet row
SHEET_ZOOM = 2  # covers are enlarged (nearest neighbour) so small ones stay readable
# Fields that change how a run executes or samples, not what it learns: kept out of version hashes.
_NOT_RECIPE = {
    "models": {
        "device",
        "dtype",
        "cpu_threads",
        "cache_dir",
        "scheduler",
        "sample_steps",
        "guidance_scale",
        "generator_name",
    },
    "stage1": {"checkpoint_every", "log_every", "sheet_items"},
}


@dataclass
class BootstrapSummary:
    """What :func:`bootstrap` did (also written to ``reports/bootstrap/summary.json``)."""

    ds: str
    root: str
    complete: bool  # False when stopped early (stop_after) before stage 1 finished
    generator_version: str
    base: dict[str, dict[str, str]]
    items: dict[str, int]  # train / held_out items, train covers
    seconds: dict[str, float]  # per phase, and total
    reused: list[str] = field(default_factory=list)  # phases found done and skipped
    vlm_warmup: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    stage1: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    contact_sheet: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PhaseTimer:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        mark = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - mark, 2)
            log.info("stage=bootstrap phase=%s seconds=%.1f", name, self.seconds[name])

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 2)}


def _recipe(cfg: ICGConfig) -> dict[str, Any]:
    return {section: getattr(cfg, section).model_dump(exclude=skip) for section, skip in _NOT_RECIPE.items()}


# ------------------------------------------------------------------ phases
def embedded_vlm_ref(cfg: ICGConfig, train: CatalogCovers) -> dict[str, str]:
    """The store reference of the warmed tiny VLM for this recipe and training data."""
    warmup = {k: v for k, v in cfg.stage1.model_dump().items() if k.startswith("vlm_warmup") or k == "seed"}
    tiny = {k: v for k, v in cfg.models.model_dump().items() if k.startswith("tiny_vlm")}
    return {
        "name": BASE_VLM,
        "version": "tiny-" + recipe_digest(tiny, warmup, data_fingerprint(train), length=16),
    }


def ensure_embedded_vlm(
    store: ObjectStore, cfg: ICGConfig, ref: dict[str, str], train: CatalogCovers, held_out: CatalogCovers
) -> dict[str, Any]:
    """Build and warm up the tiny VLM ``ref`` names unless it is stored: warm-up summary ({} if reused)."""
    if model_dir_exists(store, BASE_VLM, ref["version"]):
        return {}
    models, stage1 = cfg.models, cfg.stage1
    with tempfile.TemporaryDirectory(prefix="icg-vlm-") as tmp:
        folder = build_tiny_vlm(
            Path(tmp) / "vlm",
            models.tiny_vlm_family,
            train.titles,
            seed=stage1.seed,
            hidden_size=models.tiny_vlm_hidden_size,
            image_size=models.tiny_vlm_image_size,
        )
        summary: dict[str, Any] = {"steps": 0}
        if stage1.vlm_warmup_steps > 0:
            rows = train.cover_item.tolist()  # every training cover, with its item's title and category
            examples = warmup_set(
                [train.titles[i] for i in rows], [train.categories[i] for i in rows], list(train.covers)
            )
            held = warmup_set(held_out.titles, held_out.categories, list(held_out.references))
            summary = warm_up_vlm(folder, examples, stage1, eval_examples=held)
        put_model_dir(store, BASE_VLM, ref["version"], folder)
    return summary


def _build_embedded_sd(out: Path, cfg: ICGConfig, image_size: int) -> Path:
    models = cfg.models
    return build_tiny_sd(
        out,
        models.tiny_sd_kind,
        sample_size=image_size,
        cross_attention_dim=models.tiny_sd_cross_attention_dim,
        seed=cfg.stage1.seed,
        block_out_channels=tuple(models.tiny_sd_block_out_channels),
        prediction_type=models.tiny_sd_prediction_type,
    )


def trained_vae(
    store: ObjectStore, cfg: ICGConfig, sd_path: str, covers: np.ndarray, fingerprint: str
) -> tuple[dict[str, torch.Tensor], float, dict[str, Any]]:
    """The checkpoint's VAE trained on ``covers`` (or loaded, when this recipe and data trained one).

    Its version hashes only what the VAE depends on (architecture, VAE settings, data), so changing
    a stage-1 setting does not retrain it.

    Returns:
        (VAE state dict, scaling factor, training summary; {} when loaded).
    """
    from diffusers import AutoencoderKL

    name = f"{cfg.models.generator_name}-vae"
    vae = AutoencoderKL.from_pretrained(sd_path, subfolder="vae", local_files_only=True)
    recipe = {k: v for k, v in cfg.stage1.model_dump().items() if k.startswith("vae_") or k == "seed"}
    architecture = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    version = "vae-" + recipe_digest(recipe, architecture, fingerprint, length=16)
    if checkpoint_exists(store, name, version):
        states, config = load_module_checkpoint(store, name, version)
        return states["vae"], float(config["scaling_factor"]), {}
    summary = train_vae(vae, covers, cfg.stage1)
    save_module_checkpoint(
        store, name, version, {"vae": vae}, {"scaling_factor": summary["scaling_factor"]}, set_latest=False
    )
    return vae.state_dict(), summary["scaling_factor"], summary


def _save_trained(store: ObjectStore, cfg: ICGConfig, bundle: ICGBundle, version: str, extra: dict) -> None:
    """Store the diffusers folder (when trained here, or built here) and our modules."""
    if cfg.models.sd_path is None or cfg.stage1.train_unet or cfg.stage1.train_vae:
        with tempfile.TemporaryDirectory(prefix="icg-sd-") as tmp:
            out, covers = Path(tmp), bundle.covers
            covers.unet.save_pretrained(out / "unet")
            covers.vae.save_pretrained(out / "vae")
            covers.make_scheduler("ddim").save_pretrained(out / "scheduler")
            (out / "model_index.json").write_text((covers.checkpoint_dir / "model_index.json").read_text())
            put_model_dir(store, BASE_SD, version, out)
        bundle.base["sd"] = {"name": BASE_SD, "version": version}
        bundle.covers.base_model = f"{BASE_SD}/{version}"
    save_bundle(store, bundle, cfg.models.generator_name, version, extra)


def bootstrap(
    store: ObjectStore, cfg: ICGConfig, *, ds: str | None = None, stop_after: int | None = None
) -> BootstrapSummary:
    """Build (embedded) base checkpoints and train the stage-1 generator; see the module docstring.

    Args:
        store: the object store (the validated data of ``ds`` must exist).
        cfg: the configuration (``models`` and ``stage1`` sections).
        ds: the validated day to train on; default the newest validated catalog.
        stop_after: stop stage 1 after this many steps (state saved; a rerun resumes).

    Returns:
        The summary, also written to ``reports/bootstrap/summary.json``.
    """
    with torch_threads(cfg.models.cpu_threads):
        return _bootstrap(store, cfg, ds, stop_after)


def _bootstrap(
    store: ObjectStore, cfg: ICGConfig, ds: str | None, stop_after: int | None
) -> BootstrapSummary:
    timer = _PhaseTimer()
    ds = ds or latest_validated_ds(store)
    models, stage1 = cfg.models, cfg.stage1
    with timer.phase("data"):
        catalog = read_catalog(store, ds)
        train_ids, held_ids = split_items(catalog.column("item_id").to_pylist(), stage1.holdout_fraction)
        if not train_ids:
            raise ValueError(f"stage1.holdout_fraction={stage1.holdout_fraction} leaves no training items")
        image_size = models.tiny_sd_image_size if models.sd_path is None else _checkpoint_image_size(models)
        train = load_catalog_covers(store, ds, image_size, item_ids=train_ids)
        held_out = load_catalog_covers(store, ds, image_size, item_ids=held_ids, with_variants=False)
        fingerprint = data_fingerprint(train)
    vlm_ref = {"path": models.vlm_path} if models.vlm_path else embedded_vlm_ref(cfg, train)
    version = "s1-" + recipe_digest(_recipe(cfg), vlm_ref, models.sd_path, fingerprint, length=16)
    if checkpoint_exists(store, models.generator_name, version):
        trained = _Trained(
            load_bundle(store, models, version), complete=True, reused=["vlm", "vae", "stage1"]
        )
    else:
        trained = _train_generator(
            store, cfg, version, vlm_ref, train, held_out, fingerprint, image_size, timer, stop_after, ds
        )
    bundle, complete = trained.bundle, trained.complete
    features: dict[str, Any] = {}
    sheet = ""
    if complete:
        bundle.eval()
        with timer.phase("features"):
            features = compute_item_features(bundle.encoder, catalog, store, ds=ds).summary()
        with timer.phase("contact_sheet"):
            items = sheet_items(catalog, held_ids, stage1.sheet_items)
            sheet = write_contact_sheet(
                store, bundle, models, items, layout.bootstrap_report(f"contact_sheet-{version}.png")
            )
    summary = BootstrapSummary(
        ds=ds,
        root=store.root,
        complete=complete,
        generator_version=version,
        base=bundle.base,
        items={"train": len(train), "held_out": len(held_out), "train_covers": int(len(train.covers))},
        seconds=timer.total(),
        reused=trained.reused,
        vlm_warmup=trained.vlm,
        vae=trained.vae,
        stage1=trained.stage1,
        features=features,
        contact_sheet=sheet,
    )
    store.put_json(layout.bootstrap_report("summary.json"), summary.to_dict())
    log.info(
        "stage=bootstrap ds=%s version=%s complete=%s seconds=%s", ds, version, complete, summary.seconds
    )
    return summary


@dataclass
class _Trained:
    """The stage-1 generator a bootstrap run ends with, and what each training phase reported."""

    bundle: ICGBundle
    complete: bool
    reused: list[str] = field(default_factory=list)  # phases found done (not run again)
    vlm: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    stage1: dict[str, Any] = field(default_factory=dict)


def _train_generator(
    store: ObjectStore,
    cfg: ICGConfig,
    version: str,
    vlm_ref: dict[str, Any],
    train: CatalogCovers,
    held_out: CatalogCovers,
    fingerprint: str,
    image_size: int,
    timer: _PhaseTimer,
    stop_after: int | None,
    ds: str,
) -> _Trained:
    """VLM warm-up, VAE and stage 1 (each resumable or reused), from the embedded or given base models;
    a completed generator is saved (as ``version``, trained on ``ds``)."""
    models, stage1 = cfg.models, cfg.stage1
    with tempfile.TemporaryDirectory(prefix="icg-sd-init-") as tmp:
        sd_path = models.sd_path or str(_build_embedded_sd(Path(tmp) / "sd", cfg, image_size))
        # One after the other, not in two threads: model loading pushes torch's *process-wide*
        # device mode ("meta"), so a model built in another thread meanwhile gets no weights.
        with timer.phase("vlm"):
            vlm = ensure_embedded_vlm(store, cfg, vlm_ref, train, held_out) if not models.vlm_path else {}
        with timer.phase("vae"):
            vae_result = (
                trained_vae(store, cfg, sd_path, train.covers, fingerprint) if stage1.train_vae else None
            )
        bundle = build_bundle(store, {"vlm": vlm_ref, "sd": {"path": sd_path}}, models, seed=stage1.seed)
        vae: dict[str, Any] = {}
        if vae_result is not None:
            vae_state, scaling_factor, vae = vae_result
            bundle.covers.vae.load_state_dict(vae_state)
            bundle.covers.vae.register_to_config(scaling_factor=scaling_factor)
        ran = (("vlm", not models.vlm_path, vlm), ("vae", stage1.train_vae, vae))
        reused = [name for name, needed, summary in ran if needed and not summary]
        with timer.phase("stage1"):
            data = make_stage1_data(bundle, train.titles, train.references, train.covers, train.cover_item)
            state_name = models.generator_name + STATE_SUFFIX
            trainer = Stage1Trainer(bundle, data, stage1, store=store, version=version, state_name=state_name)
            result = trainer.run(stop_after=stop_after)
        if result.complete:  # inside the temporary folder: the saved diffusers folder copies from it
            with timer.phase("save"):
                _save_trained(store, cfg, bundle, version, {"ds": ds, "data_fingerprint": fingerprint})
    return _Trained(bundle, result.complete, reused, vlm, vae, asdict(result))


def _checkpoint_image_size(models: ModelsConfig) -> int:
    """Native resolution of a real diffusers checkpoint: UNet sample size x VAE downsampling."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.load_config(models.sd_path, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.load_config(models.sd_path, subfolder="vae", local_files_only=True)
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


# ------------------------------------------------------------------ contact sheet
def sheet_items(catalog: pa.Table, held_ids: Sequence[str], count: int) -> pa.Table:
    """``count`` held-out catalog rows, taken round-robin over categories (every category shows)."""
    held = catalog.filter(pc.is_in(catalog.column("item_id"), pa.array(list(held_ids), pa.string())))
    categories = held.column("category").to_pylist()
    rank: dict[str, int] = {}
    order = []
    for row, category in enumerate(categories):
        order.append((rank.get(category, 0), category, row))
        rank[category] = rank.get(category, 0) + 1
    rows = [row for _, _, row in sorted(order)[:count]]
    return held.take(pa.array(rows, pa.int64()))


def contact_sheet(
    references: np.ndarray, generated: Sequence[np.ndarray], titles: Sequence[str]
) -> Image.Image:
    """A grid of tiles [reference | generated...] with the title under each tile.

    Args:
        references: uint8 ``[K, S, S, 3]``.
        generated: one uint8 ``[K, S, S, 3]`` array per sample column.
        titles: K titles.
    """
    count, size = len(references), references.shape[1] * SHEET_ZOOM
    columns = min(SHEET_COLUMNS, max(count, 1))
    tile_w, tile_h, text_h = size * (1 + len(generated)), size, 14
    sheet = Image.new("RGB", (columns * (tile_w + 6), -(-count // columns) * (tile_h + text_h + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        x, y = (i % columns) * (tile_w + 6), (i // columns) * (tile_h + text_h + 6)
        for j, image in enumerate([references[i], *[g[i] for g in generated]]):
            tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (x + j * size, y))
        draw.text((x + 2, y + tile_h + 1), titles[i][: tile_w // 6], fill="black")
    return sheet


def write_contact_sheet(
    store: ObjectStore, bundle: ICGBundle, models: ModelsConfig, items: pa.Table, key: str
) -> str:
    """Generate SHEET_SAMPLES null-user covers per item and store the sheet PNG at ``key``. Returns its URI."""
    encoded = [store.read_object(uri) for uri in items.column("reference_image_uri").to_pylist()]
    rows = compute_item_features(bundle.encoder, items, store, image_bytes=encoded).table
    features = load_features(store, rows.column("features_uri").to_pylist())
    item_ids = items.column("item_id").to_pylist()
    generated = []
    for sample in range(SHEET_SAMPLES):
        seeds = [seed_for(item_id, -1 - sample, bundle.version) for item_id in item_ids]
        generated.append(
            bundle.generate(
                features,
                seeds,
                steps=models.sample_steps,
                guidance_scale=models.guidance_scale,
                scheduler=models.scheduler,
            )
        )
    size = bundle.covers.image_size
    references = (
        np.stack([to_square(decode_image(data), size) for data in encoded])
        if encoded
        else np.zeros((0, size, size, 3), np.uint8)
    )
    buffer = io.BytesIO()
    contact_sheet(references, generated, items.column("title").to_pylist()).save(buffer, format="PNG")
    uri = store.uri(store.put_bytes(key, buffer.getvalue()))
    log.info("stage=bootstrap contact sheet items=%d uri=%s", len(item_ids), uri)
    return uri


def generate_sample(
    store: ObjectStore, cfg: ICGConfig, *, items: int = 16, ds: str | None = None, version: str = "latest"
) -> str:
    """Contact sheet of ``items`` held-out items from a saved generator. Returns the PNG's URI."""
    with torch_threads(cfg.models.cpu_threads):
        bundle = load_bundle(store, cfg.models, version)
        ds = ds or latest_validated_ds(store)
        catalog = read_catalog(store, ds)
        _, held_ids = split_items(catalog.column("item_id").to_pylist(), cfg.stage1.holdout_fraction)
        rows = sheet_items(catalog, held_ids, items)
        return write_contact_sheet(
            store,
            bundle,
            cfg.models,
            rows,
            layout.bootstrap_report(f"sample-{bundle.version}-{ds}-k{items}.png"),
        )
