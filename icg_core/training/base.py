"""Short trainings of the embedded base models, which have no pretrained weights to start from.

In production the VLM, UNet and VAE are real pretrained checkpoints and stay frozen. The embedded
world builds tiny ones from random weights, and a random network is a test fixture, not a model:

- :func:`warm_up_vlm` gives the tiny VLM a captioning warm-up (language-model loss on the item's
  catalog category and title given one of its covers) so that its hidden states actually depend
  on what the image shows before it is frozen for the meta-token encoder. A pretrained VLM knows
  what genres and visual concepts look like; the catalog's own category text is the closest thing
  the embedded world has, and it is catalog content, not a preference label;
- :func:`train_vae` trains the tiny VAE on the training covers (reconstruction + a small KL term)
  and sets its ``scaling_factor`` so latents have unit variance, as the SD VAEs' factor does.

Both only ever see training items (the caller passes them); the UNet trains later, in stage 1.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icg_core.config import Stage1Config
from icg_core.models.encoder import DEFAULT_INSTRUCTION, load_vlm_processor
from icg_core.progress import Progress

log = logging.getLogger(__name__)

WARMUP_INSTRUCTION = "Describe the cover."
IGNORE_INDEX = -100  # label value the transformers loss skips


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ------------------------------------------------------------------ VLM captioning warm-up
def _pil(image: Any):
    from PIL import Image

    return (
        image.convert("RGB")
        if isinstance(image, Image.Image)
        else Image.fromarray(np.asarray(image)).convert("RGB")
    )


@dataclass
class WarmupSet:
    """Warm-up examples: an instruction shown with an image, and the answer the model must write."""

    instructions: list[str]
    answers: list[str]
    images: list[Any]

    def __len__(self) -> int:
        return len(self.answers)

    def take(self, rows: Sequence[int]) -> WarmupSet:
        return WarmupSet(
            [self.instructions[i] for i in rows],
            [self.answers[i] for i in rows],
            [self.images[i] for i in rows],
        )


def warmup_set(
    titles: Sequence[str],
    categories: Sequence[str | None],
    images: Sequence[Any],
    encoder_instruction: str = DEFAULT_INSTRUCTION,
) -> WarmupSet:
    """Two tasks per (title, category, cover) row.

    - describe: "Describe the cover." + image -> "<category>: <title>" (just the title without a
      category): what the image shows, in the catalog's words;
    - categorize: the meta-token encoder's own prompt (which contains the title) + image ->
      "<category>" (rows with a category only): the state right before the meta tokens then holds
      what the item is about, read from both title and image.
    """
    out = WarmupSet([], [], [])
    for title, category, image in zip(titles, categories, images, strict=True):
        out.instructions.append(WARMUP_INSTRUCTION)
        out.answers.append(f"{category}: {title}" if category else title)
        out.images.append(image)
        if category:
            out.instructions.append(encoder_instruction.format(title=title))
            out.answers.append(category)
            out.images.append(image)
    return out


def caption_batch(processor, examples: WarmupSet) -> dict[str, torch.Tensor]:
    """Inputs + labels for (instruction + image -> answer): the loss covers the answer tokens only.

    The prompt is the model's own chat template with the generation prompt; the answer is followed
    by the end-of-sequence token. Rows are right padded here (labels ignore the padding).
    """
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for instruction in examples.instructions
    ]
    tokenizer = processor.tokenizer
    batch = processor(
        text=prompts, images=[_pil(image) for image in examples.images], padding=True, return_tensors="pt"
    )
    input_ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
    per_token = {k: v for k, v in batch.items() if v.dim() == 2 and v.shape == input_ids.shape}
    answers = [
        tokenizer(" " + a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for a in examples.answers
    ]
    rows = []
    for i, answer in enumerate(answers):
        real = mask[i].bool()
        prompt_ids = input_ids[i][real]
        ids = torch.cat([prompt_ids, torch.tensor(answer, dtype=input_ids.dtype)])
        labels = torch.cat(
            [torch.full_like(prompt_ids, IGNORE_INDEX), torch.tensor(answer, dtype=input_ids.dtype)]
        )
        extra = {
            k: torch.cat([v[i][real], torch.zeros(len(answer), dtype=v.dtype)]) for k, v in per_token.items()
        }
        rows.append((ids, labels, extra))
    length = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id

    def padded(values: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.cat([values, torch.full((length - len(values),), fill, dtype=values.dtype)])

    out = {
        "input_ids": torch.stack([padded(ids, pad) for ids, _, _ in rows]),
        "labels": torch.stack([padded(labels, IGNORE_INDEX) for _, labels, _ in rows]),
        "attention_mask": torch.stack(
            [padded(torch.ones(len(ids), dtype=mask.dtype), 0) for ids, _, _ in rows]
        ),
    }
    for key in per_token:
        out[key] = torch.stack([padded(extra[key], 0) for _, _, extra in rows])
    out.update({k: v for k, v in batch.items() if k not in per_token})
    return out


@torch.no_grad()
def caption_loss(model, processor, examples: WarmupSet, batch_size: int = 64) -> float:
    """Mean answer loss (nats per answer token) of ``model`` on warm-up examples."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = caption_batch(processor, examples.take(range(start, min(start + batch_size, len(examples)))))
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**batch).loss) * tokens
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def warm_up_vlm(
    model_dir: str | Path, examples: WarmupSet, cfg: Stage1Config, *, eval_examples: WarmupSet | None = None
) -> dict[str, Any]:
    """Captioning warm-up of the VLM in ``model_dir`` (all weights train), saved back in place.

    Args:
        model_dir: a transformers image-text-to-text folder (the tiny VLM).
        examples: training examples (see :func:`warmup_set`).
        cfg: ``vlm_warmup_steps``, ``vlm_warmup_batch_size``, ``vlm_warmup_lr``, ``seed``.
        eval_examples: examples of items never trained on; their answer loss is reported before
            and after, the measure of what the warm-up taught.

    Returns:
        Summary: steps, seconds, loss curve, eval answer loss before/after.
    """
    from transformers import AutoModelForImageTextToText

    started = time.perf_counter()
    processor = load_vlm_processor(model_dir)
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.train()
    summary: dict[str, Any] = {"steps": cfg.vlm_warmup_steps, "curve": []}
    if eval_examples:
        summary["eval_loss_before"] = caption_loss(model, processor, eval_examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.vlm_warmup_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(cfg.seed)
    warmup = max(1, cfg.vlm_warmup_steps // 10)
    smoothed = None
    progress = Progress("stage=bootstrap vlm warm-up", cfg.vlm_warmup_steps, "steps")
    for step in range(cfg.vlm_warmup_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.vlm_warmup_lr * lr_factor(step, cfg.vlm_warmup_steps, warmup)
        rows = torch.randint(0, len(examples), (cfg.vlm_warmup_batch_size,), generator=generator).tolist()
        loss = model(**caption_batch(processor, examples.take(rows))).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        if step % cfg.log_every == 0 or step == cfg.vlm_warmup_steps - 1:
            summary["curve"].append({"step": step, "loss": round(smoothed, 5)})
        progress.add(1)
    progress.finish()
    model.eval()
    if eval_examples:
        summary["eval_loss_after"] = caption_loss(model, processor, eval_examples)
    model.save_pretrained(model_dir)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    log.info(
        "stage=bootstrap vlm warm-up done steps=%d seconds=%.1f eval answer loss %s -> %s",
        cfg.vlm_warmup_steps,
        summary["seconds"],
        summary.get("eval_loss_before"),
        summary.get("eval_loss_after"),
    )
    return summary


# ------------------------------------------------------------------ VAE
def train_vae(vae, covers: np.ndarray, cfg: Stage1Config) -> dict[str, Any]:
    """Train an ``AutoencoderKL`` on covers, then set its ``scaling_factor`` to 1 / latent std.

    Trains on random square crops of side ``cfg.vae_crop`` (the VAE is fully convolutional, and the
    mid-block attention works at any size): 4x cheaper per image at 64 -> 32 pixels.

    Args:
        vae: the VAE (trained in place, left frozen in eval mode).
        covers: uint8 ``[C, S, S, 3]`` training covers.
        cfg: ``vae_steps``, ``vae_batch_size``, ``vae_crop``, ``vae_lr``, ``vae_kl_weight``, ``seed``.

    Returns:
        Summary: steps, seconds, loss curve, latent std, scaling factor.
    """
    started = time.perf_counter()
    data = images_to_tensor(covers)
    size = data.shape[-1]
    crop = min(cfg.vae_crop, size)
    generator = torch.Generator().manual_seed(cfg.seed)
    vae.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    curve, smoothed = [], None
    warmup = max(1, cfg.vae_steps // 20)
    progress = Progress("stage=bootstrap vae", cfg.vae_steps, "steps")
    for step in range(cfg.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, warmup)
        rows = torch.randint(0, len(data), (cfg.vae_batch_size,), generator=generator)
        top, left = torch.randint(0, size - crop + 1, (2,), generator=generator).tolist()
        x = data[rows, :, top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = (
            (recon - x).abs().mean() + (recon - x).pow(2).mean() + cfg.vae_kl_weight * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            curve.append({"step": step, "loss": round(smoothed, 5)})
        progress.add(1)
    progress.finish()
    vae.requires_grad_(False)
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(data[i : i + 128]).latent_dist.mean for i in range(0, len(data), 128)])
    latent_std = float(means.std())
    vae.register_to_config(scaling_factor=1.0 / latent_std)
    seconds = round(time.perf_counter() - started, 2)
    log.info(
        "stage=bootstrap vae done steps=%d seconds=%.1f latent_std=%.3f", cfg.vae_steps, seconds, latent_std
    )
    return {
        "steps": cfg.vae_steps,
        "seconds": seconds,
        "curve": curve,
        "latent_std": latent_std,
        "scaling_factor": 1.0 / latent_std,
    }
