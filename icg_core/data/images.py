"""Image safety checks: reject by size from the header first, then decode fully to find corruption.

Images come from outside (platform dumps, importers) and are decoded by several stages, so one
function decides whether an image may be decoded at all:

1. the object's byte size against ``max_bytes`` (before it is even read, for stored objects);
2. the header only (``Image.open`` is lazy): format among :data:`ALLOWED_FORMATS`, declared
   width x height against ``max_pixels`` and ``min_side``. A decompression bomb (a few KB declaring
   20000 x 20000) stops here, before a single pixel is allocated. Pillow's own guard
   (``Image.MAX_IMAGE_PIXELS``: a warning above it, an error above twice it) is escalated to the same
   ``too_many_pixels`` verdict;
3. a full check: ``verify()`` (PNG chunk CRCs) and then ``load()`` of a fresh handle, which finds
   truncated or corrupt pixel data.

The checks temporarily turn Pillow's ``DecompressionBombWarning`` into an error with
:func:`warnings.catch_warnings`, which touches process-wide state: call them from one thread at a
time (:func:`check_image_uris` reads objects in threads but checks them in the caller's thread).
They rely on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from icg_core.config import ValidationConfig
from icg_core.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

# Formats a cover or reference image may have. Everything else (EPS, which shells out to
# Ghostscript, and the long tail of rarely fuzzed plugins) is refused as not an image.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
STATUSES = frozenset(
    {"ok", "too_large_bytes", "too_many_pixels", "too_small", "not_an_image", "corrupt", "unreadable"}
)
_DEFAULT_LIMITS = ValidationConfig()
_READ_THREADS = 8  # image reads in flight (I/O bound)


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one image; ``width``/``height``/``format`` are set once the header was read."""

    status: str  # one of STATUSES
    detail: str = ""
    width: int | None = None
    height: int | None = None
    format: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def label(self) -> str:
        """``"ok"``, or ``"<status>: <detail>"`` for reports."""
        return "ok" if self.ok else f"{self.status}: {self.detail}"


class ImageRejected(ValueError):
    """An image failed its check; ``check`` says why."""

    def __init__(self, check: ImageCheck) -> None:
        super().__init__(check.label())
        self.check = check


def _inspect(
    data: bytes, *, max_bytes: int, max_pixels: int, min_side: int
) -> tuple[ImageCheck, Image.Image | None]:
    """The check of ``data`` and, when it passed, the decoded image (still in its own mode)."""
    if len(data) > max_bytes:
        return ImageCheck("too_large_bytes", f"{len(data)} bytes exceeds the limit of {max_bytes}"), None
    if not data:
        return ImageCheck("not_an_image", "empty object"), None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return ImageCheck("too_many_pixels", f"refused from the header: {exc}"), None
        except UnidentifiedImageError:
            return ImageCheck("not_an_image", f"not a {'/'.join(ALLOWED_FORMATS)} image"), None
        except Exception as exc:  # noqa: BLE001 - plugins raise many types on malformed headers
            return ImageCheck("corrupt", f"header unreadable: {type(exc).__name__}: {exc}"), None
        width, height = header.size
        fmt = header.format
        if width * height > max_pixels:
            detail = f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
            return ImageCheck("too_many_pixels", detail, width, height, fmt), None
        if min(width, height) < min_side:
            return ImageCheck(
                "too_small", f"{width}x{height} has a side under {min_side}", width, height, fmt
            ), None
        try:
            header.verify()  # checksums; leaves the handle unusable, hence the fresh open below
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            image.load()
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib errors...
            return ImageCheck(
                "corrupt", f"decoding failed: {type(exc).__name__}: {exc}", width, height, fmt
            ), None
    return ImageCheck("ok", "", width, height, fmt), image


def check_image_bytes(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> ImageCheck:
    """Check that ``data`` is a decodable image within limits, never decoding an over-limit one.

    Args:
        data: the encoded image.
        max_bytes: largest accepted encoded size.
        max_pixels: largest accepted width * height, checked from the header before decoding.
        min_side: smallest accepted width and height.

    Returns:
        The verdict; status is one of :data:`STATUSES` (never ``"unreadable"``, which is for fetches).
    """
    return _inspect(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)[0]


def decode_image(
    data: bytes,
    *,
    max_bytes: int = _DEFAULT_LIMITS.max_image_bytes,
    max_pixels: int = _DEFAULT_LIMITS.max_image_pixels,
    min_side: int = 1,
) -> Image.Image:
    """Decode ``data`` to an RGB image after the same checks as :func:`check_image_bytes`.

    Transparent images are composited onto white, so a transparent background does not turn black.

    Returns:
        A loaded ``PIL.Image.Image`` of mode ``"RGB"``, size (width, height).

    Raises:
        ImageRejected: the image failed a check (its ``check`` says which).
    """
    check, image = _inspect(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
    if image is None:
        raise ImageRejected(check)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fetch_image_bytes(store: ObjectStore, uri: str, *, max_bytes: int) -> bytes:
    """Read an image object by URI, refusing one over ``max_bytes`` before reading it.

    Raises:
        ImageRejected: status ``unreadable`` (missing, outside the store's root) or ``too_large_bytes``.
        StorageUnavailable: the store could not answer; not a verdict on the image, so not caught here.
    """
    try:
        key = store.key(uri)
        size = store.size(key)
        if size > max_bytes:
            raise ImageRejected(
                ImageCheck("too_large_bytes", f"object of {size} bytes exceeds the limit of {max_bytes}")
            )
        return store.get_bytes(key)
    except StorageError as exc:
        raise ImageRejected(ImageCheck("unreadable", str(exc))) from exc


def check_image_uris(
    store: ObjectStore,
    uris: Iterable[str],
    *,
    max_bytes: int,
    max_pixels: int,
    min_side: int,
    io_threads: int = 8,
) -> dict[str, ImageCheck]:
    """Check every distinct URI once: objects are read ``io_threads`` at a time, checked in this thread.

    Returns:
        URI -> verdict, for each distinct URI given.
    """
    unique = list(dict.fromkeys(uris))

    def fetch(uri: str) -> bytes | ImageCheck:
        try:
            return fetch_image_bytes(store, uri, max_bytes=max_bytes)
        except ImageRejected as rejected:
            return rejected.check

    checks: dict[str, ImageCheck] = {}
    chunk = max(1, io_threads) * 4  # bounds the encoded bytes held in memory at once
    with ThreadPoolExecutor(max_workers=max(1, io_threads)) as pool:
        for start in range(0, len(unique), chunk):
            batch = unique[start : start + chunk]
            for uri, fetched in zip(batch, pool.map(fetch, batch), strict=True):
                if isinstance(fetched, ImageCheck):
                    checks[uri] = fetched
                else:
                    checks[uri] = check_image_bytes(
                        fetched, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side
                    )
    bad = sum(not c.ok for c in checks.values())
    log.info("image checks: %d distinct images, %d rejected", len(checks), bad)
    return checks


# ----------------------------------------------------------------------------- batches of pixels
def as_image_batch(images: Any, size: int | None = None) -> np.ndarray:
    """Bring a batch of covers to ``uint8 [B, S, S, 3]`` (or ``[B, H, W, 3]`` when ``size`` is None).

    Accepts a uint8 or float ([0, 1]) array ``[B, H, W, 3]`` / ``[H, W, 3]``, a torch tensor in the
    same layouts or channels-first ``[B, 3, H, W]`` (the ddpo convention, floats in [0, 1]), or a
    sequence of PIL images / arrays. Images of another size are resized (bicubic).
    """
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; validate and publish never load it
    if torch is not None and isinstance(images, torch.Tensor):
        tensor = images.detach().to("cpu", torch.float32 if images.is_floating_point() else images.dtype)
        if tensor.ndim == 4 and tensor.shape[1] == 3 and tensor.shape[-1] != 3:
            tensor = tensor.permute(0, 2, 3, 1)
        images = tensor.numpy()
    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == 3 else images
        batch = _to_uint8(batch)
        if size is None or batch.shape[1:3] == (size, size):
            return np.ascontiguousarray(batch)
        return np.stack([_resize(image, size) for image in batch])
    arrays = [
        _to_uint8(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
        for image in images
    ]
    if size is None:
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("images of different sizes need a target size")
        return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
    return np.stack([_resize(a, size) for a in arrays]) if arrays else np.zeros((0, size, size, 3), np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def read_images(store: ObjectStore, uris: Sequence[str], size: int | None = None) -> np.ndarray:
    """Read and decode image objects by URI: ``uint8 [N, S, S, 3]`` in the order given.

    Each distinct URI is read once (objects in threads, I/O bound); decoding goes through
    :func:`icg_core.data.images.decode_image`, the project's one safe decoder.
    """
    unique = list(dict.fromkeys(uris))

    def load(uri: str) -> np.ndarray:
        return np.asarray(decode_image(store.read_object(uri)))

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        decoded = dict(zip(unique, pool.map(load, unique), strict=True))
    return as_image_batch([decoded[uri] for uri in uris], size)
