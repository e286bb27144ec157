from __future__ import annotations

import io
import time

import pytest
from PIL import Image, ImageFile

from icg_core.data.images import (
    ImageRejected,
    check_image_bytes,
    check_image_uris,
    decode_image,
    fetch_image_bytes,
)
from icg_core.storage import ObjectStore
from tests.icg_core.conftest import png_bytes, png_declaring

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 16_000_000, "min_side": 16}


def test_valid_png_and_jpeg_pass_with_their_size():
    check = check_image_bytes(png_bytes((40, 24)), **LIMITS)
    assert (check.status, check.width, check.height, check.format) == ("ok", 40, 24, "PNG")
    buf = io.BytesIO()
    Image.new("RGB", (20, 30), (1, 2, 3)).save(buf, format="JPEG")
    assert check_image_bytes(buf.getvalue(), **LIMITS).status == "ok"


def test_truncated_png_is_corrupt():
    data = png_bytes((64, 64))
    check = check_image_bytes(data[: len(data) * 6 // 10], **LIMITS)
    assert check.status == "corrupt"
    assert (check.width, check.height) == (64, 64)  # the header was fine, the pixels were not


def test_flipped_byte_in_pixel_data_is_corrupt():
    data = bytearray(png_bytes((32, 32)))
    data[-20] ^= 0xFF  # inside IDAT: the chunk checksum no longer matches
    assert check_image_bytes(bytes(data), **LIMITS).status == "corrupt"


@pytest.mark.parametrize("data", [b"hello, this is text\n", b"", b"\x89PNG\r\n\x1a\n"])
def test_text_empty_and_header_only_are_not_images(data):
    assert check_image_bytes(data, **LIMITS).status == "not_an_image"


def test_formats_outside_the_allowed_list_are_refused():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="TIFF")
    check = check_image_bytes(buf.getvalue(), **LIMITS)
    assert check.status == "not_an_image"
    assert "PNG" in check.detail


def test_decompression_bomb_is_refused_from_the_header_without_decoding(monkeypatch):
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 1000  # the file is tiny; only its header is huge

    def no_decoding(self):
        raise AssertionError("a bomb must never be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    started = time.perf_counter()
    check = check_image_bytes(bomb, **LIMITS)
    assert check.status == "too_many_pixels"
    assert "400000000" in check.detail
    assert time.perf_counter() - started < 0.5


def test_over_our_pixel_limit_but_under_pillows_is_refused_with_dimensions():
    check = check_image_bytes(png_declaring(5000, 5000), **LIMITS)
    assert (check.status, check.width, check.height) == ("too_many_pixels", 5000, 5000)
    assert "25000000" in check.detail


def test_pillow_bomb_warning_is_escalated_even_with_a_generous_limit():
    # 1e8 pixels: above Image.MAX_IMAGE_PIXELS (warning), below twice it (error).
    check = check_image_bytes(png_declaring(10000, 10000), max_bytes=1_000_000, max_pixels=10**9, min_side=1)
    assert check.status == "too_many_pixels"


def test_too_many_bytes_and_too_small_sides():
    assert (
        check_image_bytes(png_bytes((32, 32)), max_bytes=50, max_pixels=10**6, min_side=1).status
        == "too_large_bytes"
    )
    check = check_image_bytes(png_bytes((8, 40)), **LIMITS)
    assert check.status == "too_small"
    assert "8x40" in check.detail


def test_decode_image_returns_rgb_and_composites_transparency_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(buf, format="PNG")
    image = decode_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (20, 20)
    assert image.getpixel((3, 3)) == (255, 255, 255)
    assert decode_image(png_bytes((16, 16), (10, 20, 30))).getpixel((0, 0)) == (10, 20, 30)


def test_decode_image_refuses_what_the_check_refuses():
    with pytest.raises(ImageRejected) as raised:
        decode_image(png_declaring(20000, 20000))
    assert raised.value.check.status == "too_many_pixels"


def test_fetch_reports_missing_foreign_and_oversized_objects(tmp_path):
    store = ObjectStore(str(tmp_path))
    big = store.put_bytes("images/big.png", png_bytes((64, 64)))
    for uri, status in (
        (store.uri("images/missing.png"), "unreadable"),
        ("s3://elsewhere/x.png", "unreadable"),
        (big, "too_large_bytes"),
    ):
        with pytest.raises(ImageRejected) as raised:
            fetch_image_bytes(store, uri, max_bytes=100)
        assert raised.value.check.status == status


def test_check_image_uris_checks_each_distinct_uri_once(tmp_path, monkeypatch):
    store = ObjectStore(str(tmp_path))
    good = store.put_bytes("images/good.png", png_bytes())
    text = store.put_bytes("images/text.png", b"not an image")
    reads = []
    original = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda key: reads.append(key) or original(key))
    checks = check_image_uris(store, [good, text, good, good], **LIMITS)
    assert {uri: c.status for uri, c in checks.items()} == {good: "ok", text: "not_an_image"}
    assert sorted(reads) == ["images/good.png", "images/text.png"]
