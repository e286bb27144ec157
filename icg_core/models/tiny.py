"""Tiny, architecture-faithful checkpoints in the standard on-disk layouts.

The embedded default and the tests load models exactly the way production loads real checkpoints
(``AutoProcessor`` / ``from_pretrained(..., local_files_only=True)``); these builders only make the
folders small. A tiny vision-language model is a real ``LlavaForConditionalGeneration`` (CLIP vision
tower + Llama text model) or ``Qwen2VLForConditionalGeneration`` with random weights and a
byte-level BPE tokenizer trained here on the catalog titles. A tiny diffusion checkpoint is a
``UNet2DConditionModel`` (SD1.5- or SDXL-type) + ``AutoencoderKL`` + ``DDIMScheduler`` with a
``model_index.json``, i.e. the folder layout of ``runwayml/stable-diffusion-v1-5`` minus the text
encoder (our adapter replaces it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

VLMFamily = Literal["llava", "qwen2_vl"]
SDKind = Literal["sd15", "sdxl"]

# Words every tokenizer knows whatever the titles were: the prompt instruction and chat roles.
FIXED_WORDS = (
    "Describe the cover for: USER ASSISTANT system user assistant You are a helpful assistant. "
    "image cover title book movie album poster the a of and in on with for"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# The Qwen2-VL instruct template, reduced to images and text.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def train_bpe_tokenizer(texts: list[str], special_tokens: tuple[str, ...], vocab_size: int = 512):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (any later text still encodes).

    Special tokens get the first ids, in the order given, and are never split.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts) + [FIXED_WORDS], trainer=trainer)
    return tokenizer


def _fast_tokenizer(family: VLMFamily, titles: list[str]):
    """The family's special-token layout wrapped as a transformers fast tokenizer (left padding)."""
    from transformers import PreTrainedTokenizerFast

    if family == "llava":
        raw = train_bpe_tokenizer(titles, LLAVA_SPECIAL_TOKENS)
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
            padding_side="left",
        )
    raw = train_bpe_tokenizer(titles, QWEN2_VL_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        padding_side="left",
    )


def build_tiny_vlm(
    out_dir: str | Path,
    family: VLMFamily = "llava",
    titles: list[str] | None = None,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    image_size: int = 32,
) -> Path:
    """Write a tiny image-text-to-text model + processor that ``from_pretrained`` loads offline.

    Args:
        out_dir: folder to create (overwritten files, existing others kept).
        family: ``"llava"`` (CLIP vision tower + Llama) or ``"qwen2_vl"``.
        titles: texts to train the BPE tokenizer on (the catalog titles); a few fixed words are added.
        seed: torch seed for the random weights.
        hidden_size: text hidden size d_mllm (the meta-token feature width).
        image_size: square input resolution of the image processor.

    Returns:
        The folder, loadable with ``AutoProcessor.from_pretrained(out_dir, local_files_only=True)`` and
        ``AutoModelForImageTextToText.from_pretrained(out_dir, local_files_only=True)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _fast_tokenizer(family, list(titles or []))
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    if family == "llava":
        model, processor = _tiny_llava(tokenizer, vocab_size, hidden_size, image_size)
    elif family == "qwen2_vl":
        model, processor = _tiny_qwen2_vl(tokenizer, vocab_size, hidden_size, image_size)
    else:
        raise ValueError(f"unknown VLM family {family!r} (use 'llava' or 'qwen2_vl')")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _write_standard_processor_class(out, model.config)
    log.info("tiny VLM written: family=%s vocab=%d hidden=%d path=%s", family, vocab_size, hidden_size, out)
    return out


def _write_standard_processor_class(out: Path, config) -> None:
    """Name the family's own processor class in the saved configs (not an image-only subclass).

    For Qwen2-VL also write the nested video-processor section a torchvision-equipped
    ``AutoProcessor`` expects (same patching as the image processor; covers never use it).
    """
    standard = {"llava": "LlavaProcessor", "qwen2_vl": "Qwen2VLProcessor"}[config.model_type]
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = out / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        data["processor_class"] = standard
        if name == "processor_config.json" and config.model_type == "qwen2_vl":
            image = data["image_processor"]
            data["video_processor"] = {
                "video_processor_type": "Qwen2VLVideoProcessor",
                **{key: image[key] for key in _VIDEO_KEYS if key in image},
            }
        path.write_text(json.dumps(data, indent=2, sort_keys=True))


_VIDEO_KEYS = (
    "size",
    "patch_size",
    "temporal_patch_size",
    "merge_size",
    "image_mean",
    "image_std",
    "resample",
)


def _tiny_llava(tokenizer, vocab_size: int, hidden_size: int, image_size: int):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    patch_size = 8
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_tokens = (image_size // patch_size) ** 2  # CLS dropped by the "default" select strategy
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def _tiny_qwen2_vl(tokenizer, vocab_size: int, hidden_size: int, image_size: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from icg_core.models.encoder import image_only_processor_class

    patch_size, merge_size, heads = 8, 2, 4
    head_dim = hidden_size // heads
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": hidden_size,
            "hidden_size": hidden_size,
            "num_heads": heads,
            "mlp_ratio": 2,
            "patch_size": patch_size,
            "spatial_merge_size": merge_size,
            "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            # M-RoPE splits the rotary half-dimension over (time, height, width).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim // 2),
            },
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    pixels = image_size * image_size  # pin the resize to exactly image_size x image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # Qwen2VLProcessor insists on a video processor, which needs torchvision; the image-only subclass
    # runs the same code and is saved under the standard class name (see encoder.load_vlm_processor).
    processor = image_only_processor_class(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )
    return model, processor


def _mrope_section(half_dim: int) -> list[int]:
    """Split ``half_dim`` rotary frequencies over (t, h, w) like Qwen2-VL's [16, 24, 24] of 64."""
    t = half_dim // 4
    h = (half_dim - t) // 2
    return [t, h, half_dim - t - h]


def build_tiny_sd(
    out_dir: str | Path,
    kind: SDKind = "sd15",
    sample_size: int = 64,
    cross_attention_dim: int | None = None,
    seed: int = 0,
    *,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    pooled_dim: int | None = None,
    addition_time_embed_dim: int = 8,
    vae_block_out_channels: tuple[int, ...] = (16, 32, 32),
    prediction_type: str = "epsilon",
) -> Path:
    """Write a tiny diffusers checkpoint folder (``unet/``, ``vae/``, ``scheduler/``, ``model_index.json``).

    Args:
        out_dir: folder to create.
        kind: ``"sd15"`` (cross-attention only) or ``"sdxl"`` (adds ``text_time`` pooled + time-id embedding).
        sample_size: image resolution in pixels; the UNet sees ``sample_size // 4`` latents (2 VAE downsamples).
        cross_attention_dim: width of ``encoder_hidden_states``; default 32 (production: 768 / 2048).
        seed: torch seed for the random weights.
        block_out_channels: UNet channels per level; cross-attention only at the lower resolution.
        layers_per_block: resnet layers per UNet level.
        pooled_dim: SDXL pooled text-embedding width; default ``cross_attention_dim``.
        addition_time_embed_dim: SDXL per-time-id embedding width (6 time ids).
        vae_block_out_channels: VAE channels per level (3 levels = the 2 downsamples).
        prediction_type: the scheduler's (and so the UNet's) target, ``"epsilon"`` or ``"v_prediction"``.

    Returns:
        The folder; each component loads with ``<Class>.from_pretrained(out_dir, subfolder=...)``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cross_attention_dim = cross_attention_dim or 32
    torch.manual_seed(seed)
    vae_downsamples = 2
    if len(vae_block_out_channels) != vae_downsamples + 1:
        raise ValueError(
            f"vae_block_out_channels needs {vae_downsamples + 1} levels, got {vae_block_out_channels}"
        )
    levels = len(block_out_channels)
    # Plain resnet blocks at full latent resolution, cross-attention below it (cheap at 16x16 latents).
    down_blocks = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up_blocks = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet_kwargs: dict = {
        "sample_size": sample_size // 2**vae_downsamples,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": tuple(block_out_channels),
        "layers_per_block": layers_per_block,
        "down_block_types": down_blocks,
        "up_block_types": up_blocks,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }
    if kind == "sdxl":
        pooled_dim = pooled_dim or cross_attention_dim
        unet_kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=pooled_dim + 6 * addition_time_embed_dim,
            transformer_layers_per_block=1,
            use_linear_projection=True,
        )
    elif kind != "sd15":
        raise ValueError(f"unknown SD kind {kind!r} (use 'sd15' or 'sdxl')")
    unet = UNet2DConditionModel(**unet_kwargs)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=tuple(vae_block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * (vae_downsamples + 1),
        up_block_types=("UpDecoderBlock2D",) * (vae_downsamples + 1),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    pipeline_class = "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline"
    model_index = {
        "_class_name": pipeline_class,
        "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        # No text encoder or tokenizer: the ICG adapter produces the conditioning.
        "text_encoder": [None, None],
        "tokenizer": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2))
    n_params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in vae.parameters())
    log.info("tiny SD written: kind=%s size=%d params=%d path=%s", kind, sample_size, n_params, out)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
