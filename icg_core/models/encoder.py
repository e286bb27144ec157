"""Meta-token encoder: item semantics from a frozen multimodal LLM (docs/architecture.md, "The method").

A transformers image-text-to-text model (LLaVA family, Qwen2-VL, ...) loaded from a local folder reads
the model's own chat prompt built from one fixed instruction with the item title and the reference
image. N learnable meta-token embeddings are appended after the prompt's input embeddings; their
last-layer hidden states are the item's features ``[N, d_mllm]``. Only the meta tokens (and an
optional LoRA on the language model) train; the backbone is frozen.

Batches are LEFT padded, so the meta tokens sit at the same final positions of every row and right
after each row's last real token; position ids count real tokens only, so an item's features do not
depend on what it is batched with.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Describe the cover for: {title}"
ENCODER_VERSION_PREFIX = "mte-"


def image_only_processor_class(processor_class: type) -> type:
    """A subclass of a multimodal processor without its video sub-processor.

    Processors such as ``Qwen2VLProcessor`` require a video processor, and transformers' video
    processors need torchvision. Covers are images only, so this subclass declares just
    ``image_processor`` and ``tokenizer`` (the processor's attributes come from ``__init__``'s
    signature) and otherwise runs the family's own code: image-token expansion, ``mm_token_type_ids``,
    chat template.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
        )

    return type(f"ImageOnly{processor_class.__name__}", (processor_class,), {"__init__": __init__})


def load_vlm_processor(model_path: str | Path):
    """The model's processor from a local folder, left padding.

    Uses ``AutoProcessor``; where that fails only because the family's video processor cannot be
    built (no torchvision), builds the image-only subclass of the same processor class from the
    folder's tokenizer, image processor and chat template.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
    except (AttributeError, ImportError, OSError, ValueError) as exc:
        config_path = Path(model_path) / "processor_config.json"
        class_name = (
            json.loads(config_path.read_text()).get("processor_class") if config_path.exists() else None
        )
        processor_class = getattr(transformers, class_name, None) if class_name else None
        if processor_class is None or "video_processor" not in processor_class.get_attributes():
            raise
        log.info("AutoProcessor failed (%s); using image-only %s", type(exc).__name__, class_name)
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(model_path, local_files_only=True)
        template_path = Path(model_path) / "chat_template.jinja"
        chat_template = template_path.read_text() if template_path.exists() else tokenizer.chat_template
        processor = image_only_processor_class(processor_class)(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
        )
    processor.tokenizer.padding_side = "left"
    return processor


def content_hash(title: str, image_bytes: bytes, encoder_version: str) -> str:
    """Stable key of an item's cached features: sha256 over (title, image bytes, encoder version)."""
    digest = hashlib.sha256()
    for part in (title.encode("utf-8"), image_bytes, encoder_version.encode("utf-8")):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity between parts
        digest.update(part)
    return digest.hexdigest()


def _as_rgb(image: Any):
    """A PIL RGB image from PIL, encoded bytes, or an ``[H, W, 3]`` uint8 array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image)).convert("RGB")
    return Image.fromarray(image).convert("RGB")


class MetaTokenEncoder(nn.Module):
    """Frozen image-text-to-text backbone + N learnable meta tokens -> item features ``[B, N, d_mllm]``.

    Args:
        model_path: local folder of a transformers image-text-to-text checkpoint and its processor.
        num_meta_tokens: N, the number of meta tokens (and feature vectors per item).
        instruction: the one prompt for every item; ``{title}`` is replaced by the item title.
        lora_rank: LoRA rank on the language model's attention projections; 0 = no LoRA.
        lora_alpha: LoRA scaling numerator.
        lora_target_modules: regex of module names LoRA adapts.
        dtype: backbone weight dtype (float32 on CPU; bfloat16/float16 on GPU).
        seed: seed of the meta-token initialization.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        num_meta_tokens: int = 32,
        instruction: str = DEFAULT_INSTRUCTION,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText

        self.model_path = str(model_path)
        self.instruction = instruction
        self.num_meta_tokens = num_meta_tokens
        self.lora_rank = lora_rank
        self.processor = load_vlm_processor(model_path)
        self.backbone = AutoModelForImageTextToText.from_pretrained(
            model_path, local_files_only=True, dtype=dtype
        )
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        embeddings = cast(torch.Tensor, self.backbone.get_input_embeddings().weight)
        self.feature_dim = int(embeddings.shape[1])
        # Start the meta tokens at the scale of real token embeddings so the backbone sees in-range input.
        generator = torch.Generator().manual_seed(seed)
        scale = float(embeddings.detach().float().std())
        init = torch.randn(num_meta_tokens, self.feature_dim, generator=generator) * scale
        self.meta_tokens = nn.Parameter(init)  # float32 master copy; cast to the backbone dtype per forward
        if lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=lora_target_modules
            )
            inject_adapter_in_model(lora, self.backbone)
            for name, param in self.backbone.named_parameters():
                param.requires_grad_("lora_" in name)
        log.info(
            "meta-token encoder: model=%s type=%s N=%d d=%d lora_rank=%d",
            self.model_path,
            self.backbone.config.model_type,
            num_meta_tokens,
            self.feature_dim,
            lora_rank,
        )

    # ----------------------------------------------------------------- modes and state
    def train(self, mode: bool = True) -> MetaTokenEncoder:
        """Train mode for the trainable parts; the backbone always runs in eval mode (no dropout)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that train (meta tokens, LoRA): what a checkpoint of this encoder stores."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trainable_state_dict` output; the keys must match this encoder's trainable set."""
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(
                f"trainable keys differ: missing {expected - set(state)}, extra {set(state) - expected}"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    @property
    def encoder_version(self) -> str:
        """Identity of the feature function: backbone config, prompt, N and the trainable weights."""
        digest = hashlib.sha256()
        # Where the backbone was loaded from is not part of the function: a copied or moved root
        # must keep its features and checkpoints valid.
        config = _without_keys(self.backbone.config.to_dict(), {"transformers_version", "_name_or_path"})
        # Nor is the precision it runs at (float16 on a GPU): spelled as float32, the dtype a CPU
        # build records, so a generator trained on CPU loads on GPU workers and versions stay as they were.
        config = _with_dtype(config, "float32")
        spec = {"config": config, "instruction": self.instruction, "n": self.num_meta_tokens}
        digest.update(json.dumps(spec, sort_keys=True, default=str).encode("utf-8"))
        for name, value in sorted(self.trainable_state_dict().items()):
            digest.update(name.encode("utf-8"))
            digest.update(value.float().cpu().numpy().tobytes())
        return ENCODER_VERSION_PREFIX + digest.hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return self.meta_tokens.device

    # ----------------------------------------------------------------- forward
    def prompt(self, title: str) -> str:
        """The chat-formatted prompt text for one title (image placeholder not yet expanded)."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": self.instruction.format(title=title)},
                ],
            }
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prepare(self, titles: Sequence[str], images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Processor output for a batch: left-padded ``input_ids``/``attention_mask`` [B, L], pixel values, ..."""
        if len(titles) != len(images):
            raise ValueError(f"{len(titles)} titles but {len(images)} images")
        texts = [self.prompt(title) for title in titles]
        batch = self.processor(
            text=texts, images=[_as_rgb(image) for image in images], padding=True, return_tensors="pt"
        )
        dtype = self.backbone.dtype  # pixel values follow the backbone's (half) precision
        return {
            key: value.to(self.device, dtype=dtype if value.is_floating_point() else None)
            for key, value in batch.items()
        }

    def forward(self, titles: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        """Meta-token features of a batch of items.

        Args:
            titles: B item titles.
            images: B reference images (PIL images, encoded bytes or [H, W, 3] uint8 arrays).

        Returns:
            float32 tensor [B, N, d_mllm]: last-layer hidden states at the meta-token positions.
        """
        batch = self.prepare(titles, images)
        input_ids = batch.pop("input_ids")
        attention_mask = batch.pop("attention_mask")
        size, n = input_ids.shape[0], self.num_meta_tokens
        text_embeds = self.backbone.get_input_embeddings()(input_ids)
        meta = self.meta_tokens.to(text_embeds.dtype).unsqueeze(0).expand(size, n, -1)
        inputs_embeds = torch.cat([text_embeds, meta], dim=1)
        ones = torch.ones(size, n, dtype=attention_mask.dtype, device=attention_mask.device)
        full_mask = torch.cat([attention_mask, ones], dim=1)
        # Per-token [B, L] side inputs (mm_token_type_ids, ...) get "text" (0) entries for the meta tokens.
        for key, value in list(batch.items()):
            if value.dim() == 2 and value.shape == input_ids.shape:
                batch[key] = torch.cat([value, torch.zeros_like(value[:, :1]).expand(size, n)], dim=1)
        position_ids = self._position_ids(input_ids, full_mask, batch)
        base = self.backbone.base_model
        outputs = base(
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            use_cache=False,
            **batch,
        )
        return outputs.last_hidden_state[:, -n:, :].float()

    def _position_ids(
        self, input_ids: torch.Tensor, full_mask: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Positions counting real tokens only (left padding), M-RoPE [3, B, L] where the model uses it."""
        base = self.backbone.base_model
        if hasattr(base, "get_rope_index") and "mm_token_type_ids" in batch:
            pad = torch.zeros_like(input_ids[:, :1]).expand(-1, full_mask.shape[1] - input_ids.shape[1])
            rope_inputs = {k: v for k, v in batch.items() if k in ("image_grid_thw", "video_grid_thw")}
            position_ids, _ = base.get_rope_index(
                torch.cat([input_ids, pad], dim=1),
                mm_token_type_ids=batch["mm_token_type_ids"],
                attention_mask=full_mask,
                **rope_inputs,
            )
            return position_ids
        return (full_mask.long().cumsum(-1) - 1).clamp(min=0)


def _with_dtype(tree: Any, dtype: str) -> Any:
    """``tree`` (nested dicts/lists) with every ``dtype`` / ``torch_dtype`` entry set to ``dtype``."""
    if isinstance(tree, dict):
        return {k: dtype if k in ("dtype", "torch_dtype") else _with_dtype(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_with_dtype(v, dtype) for v in tree]
    return tree


def _without_keys(tree: Any, keys: set[str]) -> Any:
    """``tree`` (nested dicts/lists) with every dict entry named in ``keys`` dropped, at any depth."""
    if isinstance(tree, dict):
        return {k: _without_keys(v, keys) for k, v in tree.items() if k not in keys}
    if isinstance(tree, list):
        return [_without_keys(v, keys) for v in tree]
    return tree
