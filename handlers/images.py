"""Image intake and visual questions — what an image attachment means, with no Discord types.

Why here and not in the worker: the bot is the only part that may talk to Discord, so it downloads the
attachment (after checking its declared size), and everything a worker needs travels as a blob reference.
Workers never fetch URLs.  Every image is validated with Pillow (PNG, JPEG, WebP, or a GIF's first frame),
turned upright by its EXIF orientation, stripped of metadata (EXIF, GPS, ICC, text chunks), downsized to
`IMAGE_MAX_SIDE` and re-encoded before it is stored once under its SHA-256 with a TTL.

Every refusal is an `ImageRefused` (an `InputError`) whose message is friendly and shown as is; the texts
are all in `MESSAGES` so a translation layer can replace them by `code`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from models.jobs.chat import NO_VISION, caption_prompt
from models.protocol import Bus
from models.settings import Settings

from .chat import ChatHandler, InputError, Reply, Request
from .types import CodedRefusal

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# One place for every refusal (English; `code` lets bot/i18n swap in 中文).
MESSAGES: dict[str, str] = {
    "too_many": "That's {count} images — I can look at up to {limit} at a time. Please send fewer.",
    "too_large": "“{name}” is {size_mb:.1f} MB; the limit is {limit_mb:.1f} MB. Please send a smaller image.",
    "empty": "“{name}” is an empty file, so there is nothing to look at.",
    "svg": "“{name}” is an SVG drawing; I can only read PNG, JPEG, WebP or GIF images.",
    "not_image": "“{name}” isn't an image I can read — please send a PNG, JPEG, WebP or GIF.",
    "corrupt": "“{name}” looks damaged or incomplete, so I can't open it. Please re-save it and try again.",
    "bomb": "“{name}” declares {mpix} megapixels, more than I accept ({limit} megapixels). "
    "Please send a smaller image.",
    "download": "I couldn't download “{name}”. Please try again.",
    "no_vision": NO_VISION,
}


class ImageRefused(CodedRefusal):
    """A refused image; `code` names the message in `MESSAGES` (for translations)."""

    MESSAGES = MESSAGES


@dataclass
class Attachment:
    """What a front end knows about a file before downloading it, plus how to download it."""

    filename: str
    size: int  # as declared by the platform (Discord's attachment.size)
    content_type: str | None
    fetch: Callable[[], Awaitable[bytes]]

    @classmethod
    def from_path(cls, path: str | Path) -> Attachment:
        """A local file (console mode): same checks as a Discord attachment."""
        p = Path(path).expanduser()
        size = p.stat().st_size

        async def fetch() -> bytes:
            return await asyncio.to_thread(p.read_bytes)

        return cls(p.name, size, mimetypes.guess_type(p.name)[0], fetch)


@dataclass
class StoredImage:
    ref: str  # blob reference (SHA-256 of the re-encoded bytes)
    mime: str
    width: int
    height: int
    nbytes: int
    filename: str
    frames: int = 1  # an animated GIF's frame count (only the first is kept)


@dataclass
class Prepared:
    data: bytes
    mime: str
    width: int
    height: int
    frames: int


def is_svg(name: str, content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "image/svg+xml" or name.lower().endswith(
        (".svg", ".svgz")
    )


def prepare_image(data: bytes, name: str, *, max_side: int, max_pixels: int) -> Prepared:
    """Validate, orient, strip and downsize one image (CPU work; run it in a thread).

    Only the header is parsed before the pixel-count check, so a decompression bomb is refused before
    Pillow allocates anything; Pillow's own limit (`DecompressionBombError`) is a second guard.
    """
    if not data:
        raise ImageRefused("empty", name=name)
    if data.lstrip()[:5].lower() in (b"<?xml", b"<svg ") or b"<svg" in data[:512].lower():
        raise ImageRefused("svg", name=name)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: refused in `open`
        found = re.search(r"\((\d+) pixels\)", str(exc))
        mpix = int(found.group(1)) // 1_000_000 if found else "too many"
        raise ImageRefused("bomb", name=name, mpix=mpix, limit=max_pixels // 1_000_000) from None
    except UnidentifiedImageError:
        raise ImageRefused("not_image", name=name) from None
    except (OSError, ValueError, SyntaxError):  # Pillow raises these for broken headers
        raise ImageRefused("corrupt", name=name) from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageRefused("corrupt", name=name)
        if width * height > max_pixels:
            raise ImageRefused("bomb", name=name, mpix=width * height // 1_000_000, limit=max_pixels // 1_000_000)
        fmt = img.format or ""
        frames = getattr(img, "n_frames", 1) or 1
        try:
            img.seek(0)  # a GIF's first frame
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            rgb = _flatten(upright)
        except Image.DecompressionBombError:
            raise ImageRefused(
                "bomb", name=name, mpix=width * height // 1_000_000, limit=max_pixels // 1_000_000
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError):  # truncated or corrupt pixel data
            raise ImageRefused("corrupt", name=name) from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    # A fresh image carries no `info` (EXIF, ICC, PNG text, GPS): encoders cannot copy metadata over.
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    out = io.BytesIO()
    if fmt in ("JPEG", "WEBP"):  # photos: JPEG keeps them small
        clean.save(out, "JPEG", quality=90, optimize=True)
        mime = "image/jpeg"
    else:  # screenshots, drawings, GIF frames: lossless keeps text legible
        clean.save(out, "PNG", optimize=True)
        mime = "image/png"
    return Prepared(out.getvalue(), mime, clean.width, clean.height, frames)


def _flatten(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (vision models expect opaque RGB)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class ImageIntake:
    """Checks attachments, stores the accepted images as blobs, returns their references."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings

    def precheck(self, attachments: Sequence[Attachment]) -> None:
        """Everything that can be refused without downloading: count, declared size, SVG, non-images."""
        limit = self.settings.max_images_per_message
        if len(attachments) > limit:
            raise ImageRefused("too_many", count=len(attachments), limit=limit)
        max_bytes = self.settings.max_image_bytes
        for a in attachments:
            if a.size > max_bytes:
                raise ImageRefused("too_large", name=a.filename, size_mb=a.size / 1e6, limit_mb=max_bytes / 1e6)
            if a.size == 0:
                raise ImageRefused("empty", name=a.filename)
            if is_svg(a.filename, a.content_type):
                raise ImageRefused("svg", name=a.filename)
            ctype = (a.content_type or "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith("image/"):
                raise ImageRefused("not_image", name=a.filename)

    async def ingest(self, attachments: Sequence[Attachment]) -> list[StoredImage]:
        """Validate and store every attachment, or refuse them all (nothing is stored for a refused set)."""
        self.precheck(attachments)
        prepared: list[tuple[Attachment, Prepared]] = []
        for a in attachments:
            try:
                data = await a.fetch()
            except Exception:
                raise ImageRefused("download", name=a.filename) from None
            if len(data) > self.settings.max_image_bytes:  # the declared size was wrong
                raise ImageRefused(
                    "too_large", name=a.filename, size_mb=len(data) / 1e6, limit_mb=self.settings.max_image_bytes / 1e6
                )
            try:
                prepared.append(
                    (
                        a,
                        await asyncio.to_thread(
                            prepare_image,
                            data,
                            a.filename,
                            max_side=self.settings.image_max_side,
                            max_pixels=self.settings.image_max_pixels,
                        ),
                    )
                )
            except ImageRefused:
                raise
            except Exception:  # any other decoder failure is still the file's fault, and still gets a reply
                log.warning("image %r could not be processed", a.filename[:100], exc_info=True)
                raise ImageRefused("corrupt", name=a.filename) from None
        stored = []
        for a, p in prepared:
            ref = await self.bus.put_blob(p.data, p.mime)
            stored.append(StoredImage(ref, p.mime, p.width, p.height, len(p.data), a.filename, p.frames))
        return stored


class VisionHandler:
    """Captions and visual Q&A: an image turn in the conversation, answered by a vision job."""

    def __init__(self, chat: ChatHandler, intake: ImageIntake) -> None:
        self.chat = chat
        self.intake = intake

    async def check_vision_available(self) -> None:
        """Refuse up front when every live worker is text-only (no live worker: let the job wait)."""
        workers = await self.chat.bus.alive_workers()
        if workers and not any(w.vision for w in workers):
            raise ImageRefused("no_vision")

    @staticmethod
    def prompt_for(question: str, count: int) -> str:
        """The question, or a detailed-caption request when the user sent only images."""
        question = question.strip()
        if question:
            return question
        return caption_prompt(count)

    async def ask(self, request: Request, refs: Sequence[str]) -> Reply:
        """Record the user's turn (text + image references) and submit a `vision` job for it."""
        if not refs:
            raise InputError("Please attach an image.")
        await self.check_vision_available()
        request.text = self.prompt_for(request.text, len(refs))
        request.images = list(refs)
        request.kind = "vision"
        return await self.chat.ask(request)
