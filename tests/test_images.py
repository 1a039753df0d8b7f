"""Image intake with real files made by Pillow: every bad input is refused kindly, good ones are normalised."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from handlers.chat import InputError
from handlers.images import MESSAGES, Attachment, ImageIntake, ImageRefused
from models.protocol import KEYS, Bus
from models.settings import Settings


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def attachment(
    data: bytes,
    name: str = "photo.png",
    content_type: str | None = "image/png",
    size: int | None = None,
    calls: list[str] | None = None,
) -> Attachment:
    async def fetch() -> bytes:
        if calls is not None:
            calls.append(name)
        return data

    return Attachment(name, len(data) if size is None else size, content_type, fetch)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares a huge image (the classic decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def intake(bus: Bus, settings: Settings) -> ImageIntake:
    settings.max_image_bytes = 2_000_000
    settings.max_images_per_message = 3
    settings.image_max_side = 512
    return ImageIntake(bus, settings)


async def refused(intake: ImageIntake, *attachments: Attachment) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        await intake.ingest(list(attachments))
    assert isinstance(info.value, InputError)  # front ends show InputError messages as they are
    assert str(info.value) and "Traceback" not in str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------------- refusals
async def test_too_many_images_refused_before_download(intake: ImageIntake) -> None:
    calls: list[str] = []
    png = encode(Image.new("RGB", (8, 8)), "PNG")
    err = await refused(intake, *[attachment(png, f"{i}.png", calls=calls) for i in range(4)])
    assert err.code == "too_many" and "3" in str(err)
    assert calls == []


async def test_oversized_refused_from_declared_size(intake: ImageIntake) -> None:
    calls: list[str] = []
    err = await refused(intake, attachment(b"x", "huge.jpg", "image/jpeg", size=50_000_000, calls=calls))
    assert err.code == "too_large" and "huge.jpg" in str(err)
    assert calls == []  # never downloaded


async def test_lying_declared_size_still_caught(intake: ImageIntake) -> None:
    big = b"\xff\xd8" + b"\x00" * 2_100_000
    err = await refused(intake, attachment(big, "liar.jpg", "image/jpeg", size=1000))
    assert err.code == "too_large"


async def test_zero_byte_file(intake: ImageIntake) -> None:
    err = await refused(intake, attachment(b"", "empty.png"))
    assert err.code == "empty"
    err = await refused(intake, attachment(b"", "x" * 500 + ".png"))
    assert len(str(err)) < 200  # a user-chosen name cannot blow up the reply


@pytest.mark.parametrize(
    ("name", "ctype"), [("logo.svg", None), ("logo.png", "image/svg+xml"), ("logo.png", "image/png")]
)
async def test_svg_refused(intake: ImageIntake, name: str, ctype: str | None) -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    err = await refused(intake, attachment(svg, name, ctype))
    assert err.code == "svg"


async def test_non_images_refused(intake: ImageIntake) -> None:
    calls: list[str] = []
    err = await refused(intake, attachment(b"%PDF-1.4 ...", "paper.pdf", "application/pdf", calls=calls))
    assert err.code == "not_image" and calls == []  # the declared type was enough
    err = await refused(intake, attachment(b"just some text, not pixels", "notes.png", None))
    assert err.code == "not_image"
    bmp = encode(Image.new("RGB", (8, 8)), "BMP")  # a real image, but not a format we accept
    err = await refused(intake, attachment(bmp, "old.bmp", "image/bmp"))
    assert err.code == "not_image"


async def test_corrupt_and_truncated(intake: ImageIntake) -> None:
    photo = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "JPEG")
    err = await refused(intake, attachment(photo[: len(photo) // 2], "half.jpg", "image/jpeg"))
    assert err.code == "corrupt"
    png = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "PNG")
    err = await refused(intake, attachment(png[: len(png) // 2], "half.png"))
    assert err.code == "corrupt"
    garbage = png[:16] + bytes(range(256)) * 4  # a PNG signature and then nonsense
    err = await refused(intake, attachment(garbage, "broken.png"))
    assert err.code in ("corrupt", "not_image")


async def test_decompression_bomb(intake: ImageIntake) -> None:
    data = bomb_png()
    assert len(data) < 2000  # tiny on disk...
    err = await refused(intake, attachment(data, "bomb.png"))
    assert err.code == "bomb" and "900 megapixels" in str(err)  # ...refused from its header alone
    err = await refused(intake, attachment(bomb_png(8000, 8000), "big.png"))  # under Pillow's, over ours
    assert err.code == "bomb" and "64 megapixels" in str(err)


async def test_a_bad_image_in_a_set_stores_nothing(intake: ImageIntake, bus: Bus) -> None:
    good = encode(Image.new("RGB", (10, 10), "green"), "PNG")
    await refused(intake, attachment(good, "good.png"), attachment(b"", "bad.png"))
    assert not await bus.redis.keys(KEYS.blob("*"))


async def test_download_failure(intake: ImageIntake) -> None:
    async def fetch() -> bytes:
        raise ConnectionError("cdn down")

    err = await refused(intake, Attachment("x.png", 100, "image/png", fetch))
    assert err.code == "download" and "cdn" not in str(err)


def test_every_message_renders() -> None:
    params = {"count": 9, "limit": 4, "name": "a.png", "size_mb": 12.5, "limit_mb": 10.0, "mpix": 3}
    for code in MESSAGES:
        assert ImageRefused(code, **params).code == code


# ---------------------------------------------------------------------------------------------- accepted
async def test_large_photo_is_downsized_and_stored(intake: ImageIntake, bus: Bus) -> None:
    photo = encode(Image.effect_noise((2000, 1500), 40).convert("RGB"), "JPEG", quality=80)
    [stored] = await intake.ingest([attachment(photo, "big.jpg", "image/jpeg")])
    assert (stored.width, stored.height) == (512, 384) and stored.mime == "image/jpeg"
    data, mime = await bus.get_blob(stored.ref) or (b"", "")
    assert mime == "image/jpeg"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.size == (512, 384)
    ttl = await bus.redis.ttl(KEYS.blob(stored.ref))
    assert 0 < ttl <= bus.blob_ttl
    [again] = await intake.ingest([attachment(photo, "same.jpg", "image/jpeg")])
    assert again.ref == stored.ref  # content-addressed: stored once


async def test_exif_rotation_applied_and_metadata_stripped(intake: ImageIntake, bus: Bus) -> None:
    img = Image.new("RGB", (80, 40), "white")
    img.paste((255, 0, 0), (0, 0, 40, 40))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}  # GPS
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.getexif().get(0x0112) == 6
    [stored] = await intake.ingest([attachment(data, "rotated.jpg", "image/jpeg")])
    assert (stored.width, stored.height) == (40, 80)  # upright: portrait now
    blob, _ = await bus.get_blob(stored.ref) or (b"", "")
    assert b"SecretCam" not in blob and b"Exif" not in blob
    with Image.open(io.BytesIO(blob)) as out:
        assert not out.getexif() and "icc_profile" not in out.info
        red_top = out.convert("RGB").getpixel((20, 10))
        assert red_top[0] > 200 and red_top[1] < 60  # the red half is now on top


async def test_png_text_and_transparency(intake: ImageIntake, bus: Bus) -> None:
    img = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone private")
    data = encode(img, "PNG", pnginfo=info)
    [stored] = await intake.ingest([attachment(data, "clear.png")])
    blob, mime = await bus.get_blob(stored.ref) or (b"", "")
    assert mime == "image/png" and b"someone private" not in blob
    with Image.open(io.BytesIO(blob)) as out:
        assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255)  # composited on white
        assert not getattr(out, "text", {})


async def test_animated_gif_keeps_first_frame(intake: ImageIntake, bus: Bus) -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    [stored] = await intake.ingest([attachment(buf.getvalue(), "anim.gif", "image/gif")])
    assert stored.frames == 3 and stored.mime == "image/png"
    blob, _ = await bus.get_blob(stored.ref) or (b"", "")
    with Image.open(io.BytesIO(blob)) as out:
        assert getattr(out, "n_frames", 1) == 1
        r, g, b = out.convert("RGB").getpixel((20, 20))
        assert r > 200 and g < 50 and b < 50  # the first (red) frame


async def test_webp_and_several_images(intake: ImageIntake) -> None:
    webp = encode(Image.new("RGB", (64, 32), "blue"), "WEBP")
    png = encode(Image.new("RGB", (20, 20), "yellow"), "PNG")
    stored = await intake.ingest([attachment(webp, "a.webp", "image/webp"), attachment(png, "b.png")])
    assert [(s.mime, s.width, s.height) for s in stored] == [("image/jpeg", 64, 32), ("image/png", 20, 20)]


async def test_from_path(tmp_path: object, intake: ImageIntake) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "cat.png"
    Image.new("RGB", (12, 9), "gray").save(path)
    att = Attachment.from_path(path)
    assert att.content_type == "image/png" and att.size == path.stat().st_size
    [stored] = await intake.ingest([att])
    assert (stored.width, stored.height) == (12, 9)
