"""Procedural covers of the embedded world: category motifs, palettes, cover variants, pixel attributes.

Every function here is a pure function of its arguments (random draws come in through a
``numpy.random.Generator``) and works on a batch at once. Images are ``uint8`` arrays ``[B, H, W, 3]``
(RGB), the exact pixels that are stored as PNG, so anything computed from them here is what a reader
of the stored image computes too.

A cover is a two-colour *motif* (the category's shape: rings, stripes, checkerboard, ...) with a
per-item palette, scale (period), phase, position and fill. Motifs are drawn as hard masks at twice
the output size and box-downsampled, which anti-aliases every shape the same way.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# The category motifs, in category order. A world uses the first ``n_categories`` of them.
MOTIFS: tuple[str, ...] = (
    "concentric_rings",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "diagonal_lines",
    "dots_grid",
    "triangles",
    "crosses",
    "waves",
    "sunburst",
    "concentric_squares",
    "antidiagonal_lines",
)

# Pixel attributes the users' hidden taste acts on (see image_attributes for units).
ATTRIBUTES: tuple[str, ...] = ("warmth", "brightness", "saturation", "contrast")

# Period range of each motif, in units of the image half-width (coordinates run over [-1, 1]).
# Lattice motifs (dots, triangles, crosses) need larger cells than line motifs to stay readable.
_PERIOD_RANGE: dict[str, tuple[float, float]] = {
    "concentric_rings": (0.22, 0.45),
    "horizontal_stripes": (0.22, 0.5),
    "vertical_stripes": (0.22, 0.5),
    "checkerboard": (0.25, 0.55),
    "diagonal_lines": (0.22, 0.45),
    "dots_grid": (0.35, 0.75),
    "triangles": (0.4, 0.8),
    "crosses": (0.45, 0.85),
    "waves": (0.25, 0.5),
    "sunburst": (0.0, 1.0),  # unused: spokes are counted, not spaced
    "concentric_squares": (0.22, 0.45),
    "antidiagonal_lines": (0.22, 0.45),
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601 luma weights


@dataclass(frozen=True)
class CoverParams:
    """Per-cover drawing parameters; every field is an array over the batch ``[B]`` (colours ``[B, 3]``).

    Attributes:
        motif: index into :data:`MOTIFS`.
        period: motif period in half-widths.
        phase_x, phase_y: phase of the pattern, as a fraction of the period.
        center_x, center_y: motif centre / lattice origin in [-1, 1] coordinates.
        fill: [0, 1], the share of a period the foreground takes (duty, dot radius, arm width).
        detail: [0, 1], a second shape knob (wave amplitude, spoke count, arm length).
        foreground, background: RGB colours in [0, 1].
    """

    motif: np.ndarray
    period: np.ndarray
    phase_x: np.ndarray
    phase_y: np.ndarray
    center_x: np.ndarray
    center_y: np.ndarray
    fill: np.ndarray
    detail: np.ndarray
    foreground: np.ndarray
    background: np.ndarray

    def take(self, index: np.ndarray) -> CoverParams:
        """The parameters of the covers at ``index``."""
        return CoverParams(**{name: value[index] for name, value in self.__dict__.items()})


@dataclass(frozen=True)
class CoverJitter:
    """Attribute jitter turning a reference cover into a variant; arrays over the batch ``[B]``.

    Attributes:
        warmth: added to red and subtracted from blue (fraction of full scale).
        brightness: added to every channel (fraction of full scale).
        log_saturation: log of the factor applied to each pixel's distance from its grey.
        log_contrast: log of the factor applied to the distance from the image's mean luma.
    """

    warmth: np.ndarray
    brightness: np.ndarray
    log_saturation: np.ndarray
    log_contrast: np.ndarray


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Convert HSV colours in [0, 1] to RGB in [0, 1]; ``hsv`` has shape ``[..., 3]``."""
    h, s, v = hsv[..., 0] % 1.0, hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [
        np.stack([v, t, p], -1),
        np.stack([q, v, p], -1),
        np.stack([p, v, t], -1),
        np.stack([p, q, v], -1),
        np.stack([t, p, v], -1),
        np.stack([v, p, q], -1),
    ]
    out = np.zeros(hsv.shape, dtype=np.float64)
    for k, choice in enumerate(choices):
        out = np.where((sector == k)[..., None], choice, out)
    return out


def sample_palettes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (foreground, background) RGB pairs, each ``[n, 3]`` in [0, 1].

    Hue, saturation and value are free, but the two colours always differ in value by at least
    0.25, so the motif stays visible under any hue pair (no iso-luminant palettes).
    """
    hue = rng.uniform(0, 1, n)
    bg_hue = hue + rng.choice([-1.0, 1.0], n) * rng.uniform(0.05, 0.5, n)
    sat = rng.uniform(0.15, 0.95, (2, n))
    value = rng.uniform(0.2, 0.95, n)
    step = rng.choice([-1.0, 1.0], n) * rng.uniform(0.25, 0.6, n)
    bg_value = value + step
    outside = (bg_value < 0.1) | (bg_value > 1.0)
    bg_value = np.clip(np.where(outside, value - step, bg_value), 0.05, 1.0)
    fg = hsv_to_rgb(np.stack([hue, sat[0], value], -1))
    bg = hsv_to_rgb(np.stack([bg_hue, sat[1], bg_value], -1))
    return fg, bg


def sample_cover_params(rng: np.random.Generator, motif: np.ndarray) -> CoverParams:
    """Draw random drawing parameters for covers of the given motifs.

    Args:
        rng: source of randomness.
        motif: ``[B]`` indices into :data:`MOTIFS`.
    """
    motif = np.asarray(motif, dtype=np.int64)
    n = len(motif)
    lo = np.array([_PERIOD_RANGE[MOTIFS[m]][0] for m in motif])
    hi = np.array([_PERIOD_RANGE[MOTIFS[m]][1] for m in motif])
    fg, bg = sample_palettes(rng, n)
    return CoverParams(
        motif=motif,
        period=rng.uniform(lo, hi) if n else np.zeros(0),
        phase_x=rng.uniform(0, 1, n),
        phase_y=rng.uniform(0, 1, n),
        center_x=rng.uniform(-0.5, 0.5, n),
        center_y=rng.uniform(-0.5, 0.5, n),
        fill=rng.uniform(0, 1, n),
        detail=rng.uniform(0, 1, n),
        foreground=fg,
        background=bg,
    )


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)


def _motif_mask(name: str, x: np.ndarray, y: np.ndarray, p: CoverParams) -> np.ndarray:
    """Boolean foreground mask ``[B, R, R]`` of one motif; ``x``, ``y`` are ``[1, R, R]`` coordinates."""

    def col(a: np.ndarray) -> np.ndarray:
        return a[:, None, None].astype(np.float32)

    period, fill, detail = col(p.period), col(p.fill), col(p.detail)
    u, v = x - col(p.center_x), y - col(p.center_y)
    px, py = col(p.phase_x), col(p.phase_y)
    duty = 0.35 + 0.3 * fill
    if name == "concentric_rings":
        return _frac(np.hypot(u, v) / period + px) < duty
    if name == "horizontal_stripes":
        return _frac(v / period + py) < duty
    if name == "vertical_stripes":
        return _frac(u / period + px) < duty
    if name == "checkerboard":
        return (np.floor(u / period + px) + np.floor(v / period + py)) % 2 == 0
    if name == "diagonal_lines":
        return _frac((u + v) / (np.sqrt(2) * period) + px) < duty
    if name == "antidiagonal_lines":
        return _frac((u - v) / (np.sqrt(2) * period) + px) < duty
    if name == "concentric_squares":
        return _frac(np.maximum(np.abs(u), np.abs(v)) / period + px) < duty
    if name == "waves":
        wavelength, amplitude = 3.0 * period, (0.05 + 0.1 * detail)
        return _frac((v + amplitude * np.sin(2 * np.pi * u / wavelength)) / period + py) < duty
    if name == "sunburst":
        spokes = np.round(6 + 10 * detail)
        return _frac(spokes * np.arctan2(v, u) / (2 * np.pi) + px) < 0.5
    # Lattice motifs: a, b are coordinates inside the lattice cell, in [-0.5, 0.5).
    a, b = _frac(u / period + px) - 0.5, _frac(v / period + py) - 0.5
    if name == "dots_grid":
        return np.hypot(a, b) < 0.18 + 0.17 * fill
    if name == "triangles":
        half_base = 0.3 + 0.15 * fill
        depth = (b + 0.4) / 0.8  # 0 at the apex (top), 1 at the base (bottom)
        return (depth >= 0) & (depth <= 1) & (np.abs(a) <= half_base * depth)
    if name == "crosses":
        arm_width, arm_length = 0.07 + 0.07 * fill, 0.28 + 0.14 * detail
        return ((np.abs(a) < arm_width) & (np.abs(b) < arm_length)) | (
            (np.abs(b) < arm_width) & (np.abs(a) < arm_length)
        )
    raise ValueError(f"unknown motif {name!r}; known: {MOTIFS}")


def render_covers(params: CoverParams, size: int) -> np.ndarray:
    """Draw covers.

    Args:
        params: drawing parameters of ``B`` covers.
        size: side of the square output, pixels.

    Returns:
        ``uint8`` array ``[B, size, size, 3]``.
    """
    n = len(params.motif)
    render = 2 * size  # supersampled, then 2x2 box-averaged: anti-aliased edges
    coords = ((np.arange(render) + 0.5) / render * 2 - 1).astype(np.float32)
    x, y = coords[None, None, :], coords[None, :, None]
    coverage = np.zeros((n, size, size), dtype=np.float32)
    for m in np.unique(params.motif):
        rows = np.flatnonzero(params.motif == m)
        mask = _motif_mask(MOTIFS[m], x, y, params.take(rows))
        mask = np.broadcast_to(mask, (len(rows), render, render)).astype(np.float32)
        coverage[rows] = mask.reshape(len(rows), size, 2, size, 2).mean(axis=(2, 4))
    fg, bg = params.foreground[:, None, None, :], params.background[:, None, None, :]
    image = bg + (fg - bg) * coverage[..., None]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def sample_jitter(rng: np.random.Generator, n: int, scale: float = 1.0) -> CoverJitter:
    """Draw ``n`` attribute jitters, symmetric around no change (both directions of every attribute).

    Args:
        rng: source of randomness.
        n: number of jitters.
        scale: widens (> 1) or narrows (< 1) every range.
    """
    return CoverJitter(
        warmth=rng.uniform(-0.15, 0.15, n) * scale,
        brightness=rng.uniform(-0.2, 0.2, n) * scale,
        log_saturation=rng.uniform(-0.8, 0.8, n) * scale,
        log_contrast=rng.uniform(-0.5, 0.5, n) * scale,
    )


def _luma(image: np.ndarray) -> np.ndarray:
    return image @ _LUMA


def apply_jitter(images: np.ndarray, jitter: CoverJitter) -> np.ndarray:
    """Apply one jitter per image: contrast, then saturation, brightness, warmth; clipped to [0, 255].

    Args:
        images: ``uint8 [B, H, W, 3]``.
        jitter: ``B`` jitters.

    Returns:
        ``uint8 [B, H, W, 3]``.
    """

    def col(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float32)[:, None, None, None]

    image = images.astype(np.float32) / 255.0
    mean_luma = _luma(image).mean(axis=(1, 2))[:, None, None, None]
    image = mean_luma + (image - mean_luma) * np.exp(col(jitter.log_contrast))
    grey = _luma(image)[..., None]
    image = grey + (image - grey) * np.exp(col(jitter.log_saturation))
    image = image + col(jitter.brightness)
    warm = col(jitter.warmth)[..., 0]
    image[..., 0] += warm
    image[..., 2] -= warm
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def image_attributes(images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Visual attributes of each image, in the order of :data:`ATTRIBUTES`.

    Units (all on the 0-255 scale divided by 255):
      - warmth: mean of (R - B), in [-1, 1]; positive is warm (red/orange), negative cool (blue).
      - brightness: mean Rec. 601 luma, in [0, 1].
      - saturation: mean HSV saturation (max - min) / max per pixel (0 for black), in [0, 1].
      - contrast: standard deviation of luma over the image (RMS contrast), in [0, 0.5].

    Args:
        images: ``uint8 [B, H, W, 3]``.
        batch: images processed at once (bounds memory).

    Returns:
        ``float64 [B, 4]``.
    """
    out = np.zeros((len(images), len(ATTRIBUTES)), dtype=np.float64)
    for start in range(0, len(images), batch):
        image = images[start : start + batch].astype(np.float32) / 255.0
        luma = _luma(image)
        high, low = image.max(axis=-1), image.min(axis=-1)
        saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
        out[start : start + batch] = np.stack(
            [
                (image[..., 0] - image[..., 2]).mean(axis=(1, 2)),
                luma.mean(axis=(1, 2)),
                saturation.mean(axis=(1, 2)),
                luma.std(axis=(1, 2)),
            ],
            axis=1,
        )
    return out


def as_image_batch(images: Any, size: int) -> np.ndarray:
    """Bring images to the world's format: ``uint8 [B, size, size, 3]`` RGB.

    Accepts a ``uint8`` or float (values in [0, 1]) array ``[B, H, W, 3]`` or ``[H, W, 3]``, or a
    sequence of PIL images / arrays of any size. Images of another size are resized (bicubic,
    anti-aliased); non-square images are stretched to square.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (size, size, 3):
        return _to_uint8(images)
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, (Sequence, np.ndarray)):
        raise TypeError(f"expected an image array or a sequence of images, got {type(images).__name__}")
    out = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = image if isinstance(image, Image.Image) else Image.fromarray(_to_uint8(np.asarray(image)))
        pil = pil.convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(pil)
    return out


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {array.dtype}")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 [B, H, W, 3]`` images to ``[B, size, size, 3]`` (bicubic, anti-aliased)."""
    return as_image_batch(list(images), size)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one ``uint8 [H, W, 3]`` image (deterministic: no timestamps or metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The ``uint8 [H, W, 3]`` pixels of PNG (or any PIL-readable) bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
