"""Tiny checkpoints for the model tests, built once per session into a temp dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from icg_core.models.tiny import build_tiny_sd, build_tiny_vlm

TITLES = [
    "The Red Fox",
    "A Night in Paris",
    "Quantum Gardens",
    "Songs of the Northern Sea, Collected and Annotated for a Long Winter of Reading by the Fire",
]
FEATURE_DIM = 64  # tiny VLM hidden size
META_TOKENS = 8
CROSS_DIM = 32


def reference_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random uint8 [48, 40, 3] images (not the processor's size: the processor must resize)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlm")
    return {family: build_tiny_vlm(root / family, family, TITLES, seed=0) for family in ("llava", "qwen2_vl")}


@pytest.fixture(scope="session")
def tiny_sd_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_sd")
    return {
        kind: build_tiny_sd(root / kind, kind, sample_size=32, cross_attention_dim=CROSS_DIM, seed=0)
        for kind in ("sd15", "sdxl")
    }
