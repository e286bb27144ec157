"""The tiny checkpoints load through the standard loaders, offline."""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from icg_core.models.encoder import load_vlm_processor
from tests.icg_core.models.conftest import TITLES


def test_llava_folder_loads_with_auto_classes(tiny_vlm_dirs):
    path = tiny_vlm_dirs["llava"]
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    # The trained tokenizer round-trips a title.
    ids = processor.tokenizer(TITLES[0], add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == TITLES[0]


def test_qwen2_vl_folder_loads(tiny_vlm_dirs):
    path = tiny_vlm_dirs["qwen2_vl"]
    processor = load_vlm_processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    tokens = processor.tokenizer.convert_tokens_to_ids(
        ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"]
    )
    assert tokens == [
        model.config.image_token_id,
        model.config.vision_start_token_id,
        model.config.vision_end_token_id,
    ]
    assert processor.tokenizer.padding_side == "left"


def test_sd_folders_load_by_subfolder(tiny_sd_dirs):
    for kind, path in tiny_sd_dirs.items():
        index = json.loads((path / "model_index.json").read_text())
        assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        assert vae.config.latent_channels == 4
        assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 32
        if kind == "sdxl":
            assert unet.config.addition_embed_type == "text_time"
            pooled = unet.config.cross_attention_dim
            expected = pooled + 6 * unet.config.addition_time_embed_dim
            assert unet.config.projection_class_embeddings_input_dim == expected
            sample = torch.zeros(1, 4, 8, 8)
            out = unet(
                sample,
                10,
                encoder_hidden_states=torch.zeros(1, 3, unet.config.cross_attention_dim),
                added_cond_kwargs={"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)},
            ).sample
            assert out.shape == sample.shape
