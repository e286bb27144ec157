"""The ICG generator as one object: encoder + refiner + adapter + a diffusers checkpoint, saved and loaded.

``ICGBundle`` holds the four parts and turns item features (and optionally users) into covers. Our
modules are stored with :func:`save_module_checkpoint` as ``models/<generator_name>/<version>/``;
the config there names the base checkpoints they were trained against, either as local paths
(production: ``models.vlm_path`` / ``models.sd_path``) or as model folders in the object store
(embedded: ``models/base-vlm/<version>/``, ``models/base-sd/<version>/``, written by bootstrap).

Model folders in the store are the standard ``save_pretrained`` layouts copied object by object,
with a ``_SUCCESS`` marker written last. ``from_pretrained`` needs a local folder: for a local root
that is the folder under the root itself; for an S3 root the objects are downloaded once into
``models.cache_dir/<name>/<version>/`` (complete when its own ``_SUCCESS`` copy exists).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icg_core import layout
from icg_core.config import ModelsConfig
from icg_core.models.checkpoint import (
    checkpoint_prefix,
    load_module_checkpoint,
    resolve_version,
    save_module_checkpoint,
)
from icg_core.models.conditioning import (
    AdapterConfig,
    ConditionAdapter,
    Conditioning,
    PersonalizationRefiner,
    RefinerConfig,
)
from icg_core.models.encoder import MetaTokenEncoder
from icg_core.models.generator import CoverGenerator
from icg_core.storage import SUCCESS, ObjectStore, StorageError

log = logging.getLogger(__name__)

BASE_VLM = "base-vlm"
BASE_SD = "base-sd"
_HEADS = 4  # attention heads of refiner and adapter (divides every width used)


# ------------------------------------------------------------------ model folders in the store
def put_model_dir(store: ObjectStore, name: str, version: str, folder: str | Path) -> str:
    """Copy a local model folder to ``models/<name>/<version>/``, marker last, and move ``_latest``."""
    prefix = checkpoint_prefix(name, version)
    store.delete(layout.model_marker(name, version))
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        store.put_bytes(
            layout.model_file(name, version, path.relative_to(folder).as_posix()), path.read_bytes()
        )
    store.put_json(
        layout.model_marker(name, version), {"files": [p.relative_to(folder).as_posix() for p in files]}
    )
    layout.set_latest(store, name, version)
    log.info("model folder stored: name=%s version=%s files=%d", name, version, len(files))
    return store.uri(prefix)


def model_dir_exists(store: ObjectStore, name: str, version: str) -> bool:
    return store.exists(layout.model_marker(name, version))


def model_dir(store: ObjectStore, name: str, version: str, cache_dir: str | Path) -> Path:
    """A local folder holding ``models/<name>/<version>/`` (the store's own folder for local roots)."""
    prefix = checkpoint_prefix(name, version)
    if not store.exists(layout.model_marker(name, version)):
        raise StorageError(f"model folder {store.uri(prefix)} is missing or incomplete (no {SUCCESS})")
    if store.scheme == "file":
        return Path(store.arrow_path(prefix))
    local = Path(os.path.expanduser(str(cache_dir))) / name / version
    if not (local / SUCCESS).exists():
        for key in store.list(prefix):
            relative = key[len(prefix) + 1 :]
            if relative == SUCCESS:
                continue  # copied last: its presence means the local copy is complete
            target = local / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get_bytes(key))
        (local / SUCCESS).write_bytes(store.get_bytes(layout.model_marker(name, version)))
        log.info("model folder cached: %s -> %s", store.uri(prefix), local)
    return local


def resolve_base_dir(store: ObjectStore, ref: dict[str, str], cache_dir: str | Path) -> Path:
    """The local folder a base reference names: ``{"path": ...}`` or ``{"name": ..., "version": ...}``."""
    if "path" in ref:
        return Path(ref["path"])
    return model_dir(store, ref["name"], ref["version"], cache_dir)


# ------------------------------------------------------------------ the bundle
@dataclass
class ICGBundle:
    """Encoder, refiner, adapter and cover generator, wired together.

    Attributes:
        encoder: item (title, reference image) -> meta-token features ``[B, N, d]``.
        refiner: user-conditioned refinement of the features.
        adapter: features -> UNet conditioning.
        covers: the diffusers UNet + VAE + scheduler that samples covers.
        base: where the base checkpoints come from: {"vlm": ref, "sd": ref} (see :func:`resolve_base_dir`).
        version: the generator version (checkpoint version), "" while untrained.
    """

    encoder: MetaTokenEncoder
    refiner: PersonalizationRefiner
    adapter: ConditionAdapter
    covers: CoverGenerator
    base: dict[str, dict[str, str]]
    version: str = ""

    def conditioning(
        self, features: torch.Tensor, users: torch.Tensor | None = None, user_mask: torch.Tensor | None = None
    ) -> Conditioning:
        """UNet conditioning of features ``[B, N, d]`` for users ``[B, u]`` (None = null user)."""
        return self.adapter(self.refiner(features, users, user_mask))

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        seeds: Sequence[int],
        *,
        users: torch.Tensor | None = None,
        user_mask: torch.Tensor | None = None,
        steps: int = 20,
        guidance_scale: float = 3.0,
        scheduler: str = "ddim",
        batch_size: int = 32,
    ) -> np.ndarray:
        """Covers for B rows of features: uint8 ``[B, H, W, 3]``, row i from ``seeds[i]``.

        Args:
            features: ``[B, N, d]`` cached or fresh meta-token features.
            seeds: B seeds (see ``seed_for``).
            users: ``[B, u]`` user embeddings / segment centroids, None = null user.
            user_mask: ``[B]`` bool, False = null user for that row.
            steps, guidance_scale, scheduler: sampling settings.
            batch_size: rows sampled at once.
        """
        out = self._sample(
            features, seeds, users, user_mask, steps, guidance_scale, scheduler, batch_size, "uint8"
        )
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    def generate_latents(
        self,
        features: torch.Tensor,
        seeds: Sequence[int],
        *,
        users: torch.Tensor | None = None,
        steps: int = 20,
        guidance_scale: float = 3.0,
        scheduler: str = "ddim",
        batch_size: int = 32,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """The final latents ``[B, 4, h, w]`` of :meth:`generate`'s covers (to refine before decoding).

        ``init_latents`` ``[B, 4, h, w]`` and ``strength``: start from those latents noised to
        ``strength`` instead of pure noise (:meth:`CoverGenerator.sample`).
        """
        return torch.cat(
            self._sample(
                features,
                seeds,
                users,
                None,
                steps,
                guidance_scale,
                scheduler,
                batch_size,
                "latent",
                init_latents,
                strength,
            )
        )

    def _sample(
        self,
        features: torch.Tensor,
        seeds: Sequence[int],
        users: torch.Tensor | None,
        user_mask: torch.Tensor | None,
        steps: int,
        guidance_scale: float,
        scheduler: str,
        batch_size: int,
        output_type: str,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> list[Any]:
        device = self.covers.device
        out = []
        for start in range(0, len(features), batch_size):
            rows = slice(start, start + batch_size)
            user = None if users is None else users[rows].to(device)
            mask = None if user_mask is None else user_mask[rows].to(device)
            cond = self.conditioning(features[rows].to(device), user, mask)
            out.append(
                self.covers.sample(
                    cond,
                    seeds=list(seeds[rows]),
                    steps=steps,
                    guidance_scale=guidance_scale,
                    scheduler=scheduler,  # type: ignore[arg-type]
                    null_cond=self.adapter.null_conditioning(len(cond)),
                    output_type=output_type,  # type: ignore[arg-type]
                    init_latents=None if init_latents is None else init_latents[rows],
                    strength=strength,
                )
            )
        return out

    def eval(self) -> ICGBundle:
        for module in (self.encoder, self.refiner, self.adapter):
            module.eval()
        return self

    def module_config(self) -> dict[str, Any]:
        """What :func:`load_bundle` needs to rebuild the modules."""
        return {
            "encoder": {
                "num_meta_tokens": self.encoder.num_meta_tokens,
                "instruction": self.encoder.instruction,
                "lora_rank": self.encoder.lora_rank,
            },
            "refiner": dataclasses.asdict(self.refiner.config),
            "adapter": dataclasses.asdict(self.adapter.config),
            "base": self.base,
            "base_model": self.covers.base_model,
            "encoder_version": self.encoder.encoder_version,
        }


def adapter_config_for(covers: CoverGenerator, feature_dim: int, cfg: ModelsConfig) -> AdapterConfig:
    """Adapter shapes read off the UNet: cross-attention width, and for SDXL the pooled width."""
    unet = covers.unet.config
    pooled_dim = 1280
    if covers.kind == "sdxl":
        pooled_dim = int(unet.projection_class_embeddings_input_dim) - 6 * int(unet.addition_time_embed_dim)
    return AdapterConfig(
        feature_dim=feature_dim,
        num_tokens=cfg.num_meta_tokens,
        kind=covers.kind,  # type: ignore[arg-type]
        cross_attention_dim=int(unet.cross_attention_dim),
        pooled_dim=pooled_dim,
        image_size=covers.image_size,
        hidden_dim=cfg.adapter_hidden_dim,
        num_layers=cfg.adapter_layers,
        num_heads=_HEADS,
    )


def build_bundle(
    store: ObjectStore, base: dict[str, dict[str, str]], cfg: ModelsConfig, *, seed: int = 0
) -> ICGBundle:
    """Fresh (untrained) ICG modules around the base checkpoints ``base`` = {"vlm": ref, "sd": ref}."""
    torch.manual_seed(seed)
    encoder = MetaTokenEncoder(
        resolve_base_dir(store, base["vlm"], cfg.cache_dir),
        num_meta_tokens=cfg.num_meta_tokens,
        dtype=_backbone_dtype(cfg),
        seed=seed,
    ).to(cfg.device)
    covers = CoverGenerator(
        resolve_base_dir(store, base["sd"], cfg.cache_dir), device=cfg.device, dtype=cfg.dtype
    )
    refiner = PersonalizationRefiner(
        RefinerConfig(
            feature_dim=encoder.feature_dim,
            user_dim=cfg.user_dim,
            num_layers=cfg.refiner_layers,
            num_heads=_HEADS,
        )
    ).to(cfg.device)
    adapter = ConditionAdapter(adapter_config_for(covers, encoder.feature_dim, cfg)).to(cfg.device)
    return ICGBundle(encoder, refiner, adapter, covers, base)


def _backbone_dtype(cfg: ModelsConfig) -> torch.dtype:
    if torch.device(cfg.device).type == "cpu":
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]


def save_bundle(
    store: ObjectStore,
    bundle: ICGBundle,
    name: str,
    version: str,
    extra: dict[str, Any] | None = None,
    *,
    set_latest: bool = True,
) -> str:
    """Save meta tokens, refiner and adapter as ``models/<name>/<version>/`` (base checkpoints by reference).

    ``set_latest`` moves ``models/<name>/_latest`` to the version (not for a challenger).
    """
    modules: dict[str, torch.nn.Module | Mapping[str, torch.Tensor]] = {
        "meta_tokens": bundle.encoder.trainable_state_dict(),
        "refiner": bundle.refiner,
        "adapter": bundle.adapter,
    }
    uri = save_module_checkpoint(
        store, name, version, modules, {**bundle.module_config(), **(extra or {})}, set_latest=set_latest
    )
    bundle.version = version
    return uri


def load_bundle(store: ObjectStore, cfg: ModelsConfig, version: str = "latest") -> ICGBundle:
    """Rebuild a saved generator: base checkpoints from its config, our modules from their weights."""
    resolved = resolve_version(store, cfg.generator_name, version)
    states, config = load_module_checkpoint(store, cfg.generator_name, resolved)
    base = config["base"]
    encoder = MetaTokenEncoder(
        resolve_base_dir(store, base["vlm"], cfg.cache_dir),
        num_meta_tokens=config["encoder"]["num_meta_tokens"],
        instruction=config["encoder"]["instruction"],
        lora_rank=config["encoder"]["lora_rank"],
        dtype=_backbone_dtype(cfg),
    ).to(cfg.device)
    encoder.load_trainable_state_dict(states["meta_tokens"])
    covers = CoverGenerator(
        resolve_base_dir(store, base["sd"], cfg.cache_dir), device=cfg.device, dtype=cfg.dtype
    )
    refiner = PersonalizationRefiner(RefinerConfig(**config["refiner"])).to(cfg.device)
    refiner.load_state_dict(states["refiner"])
    adapter = ConditionAdapter(AdapterConfig(**config["adapter"])).to(cfg.device)
    adapter.load_state_dict(states["adapter"])
    if encoder.encoder_version != config["encoder_version"]:
        raise StorageError(
            f"generator {resolved}: encoder version {encoder.encoder_version} != saved {config['encoder_version']}"
            " (the base VLM changed under it)"
        )
    return ICGBundle(encoder, refiner, adapter, covers, base, resolved).eval()
