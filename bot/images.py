"""Pictures a person sends (LINE, e-mail, Telegram, the web chat), made safe to keep and to show.

Screenshots are how people show harassment, so a counsellor must be able to see them; but a file is
only kept as a picture after Pillow has decoded it and written it again: what is stored is the pixels,
re-encoded as JPEG (or PNG where there is transparency), without EXIF, GPS or any other metadata, at
most ``MAX_SIDE`` pixels a side. A file that does not decode as one of the usual picture formats, or
that is too large in bytes or pixels (a decompression bomb), is not kept. Everything else (PDF,
archives, programs) is refused by kind, so that the person can be told which.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import PurePath
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.types import Item, Picture

MAX_BYTES = 20 * 1024 * 1024  # a picture file larger than this is not read at all
MAX_PIXELS = 50_000_000  # width x height of the decoded picture (a 8000 x 6000 photo is 48 million)
MAX_SIDE = 2048  # the stored picture fits in this square (enough to read a screenshot's text)
JPEG_QUALITY = 85
FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}  # what phones and screenshots are

_PICTURES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
_ARCHIVES = {".zip", ".rar", ".7z", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".lzh", ".cab", ".iso", ".dmg"}
_PROGRAMS = {
    ".exe", ".msi", ".bat", ".cmd", ".com", ".scr", ".ps1", ".vbs", ".js", ".jar", ".apk", ".app",
    ".sh", ".dll", ".lnk", ".hta", ".wsf", ".pkg", ".deb", ".rpm",
}  # fmt: skip
_DOCUMENTS = {
    ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".ods", ".odp", ".rtf", ".txt", ".csv",
    ".pages", ".numbers", ".key", ".html", ".htm", ".xml", ".json", ".ics", ".vcf", ".eml",
}  # fmt: skip


def reencode(data: bytes) -> Picture | None:
    """The picture in ``data``, decoded and re-encoded without metadata; None when it is not one."""
    if not data or len(data) > MAX_BYTES:
        return None
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own pixel limit and refuses at twice it: both are no picture here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format not in FORMATS:
                    return None
                width, height = opened.size
                if width < 1 or height < 1 or width * height > MAX_PIXELS:
                    return None
                opened.seek(0)  # an animation: its first frame
                opened.load()  # a truncated or corrupt file fails here
                # The orientation a phone wrote in EXIF is applied to the pixels before EXIF is dropped.
                image = ImageOps.exif_transpose(opened)
                return _encode(image)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        MemoryError,
    ):
        return None


def _encode(image: Image.Image) -> Picture:
    alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    image = image.convert("RGBA" if alpha else "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # A new image object carries no info dict into save: no EXIF, no ICC, no comments, no XMP.
    clean = Image.new(image.mode, image.size)
    clean.paste(image)
    if alpha:
        clean.save(out, format="PNG", optimize=True)
        content_type = "image/png"
    else:
        clean.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        content_type = "image/jpeg"
    return Picture(content_type, clean.width, clean.height, out.getvalue())


def refused_kind(name: str, content_type: str) -> str:
    """What a file that is not kept is, for the reply that tells the person (a key of content's
    ``kind_*`` formats)."""
    suffix = PurePath(name.lower()).suffix if name else ""
    ctype = content_type.lower()
    if suffix == ".pdf" or ctype == "application/pdf":
        return "pdf"
    if suffix in _ARCHIVES or any(x in ctype for x in ("zip", "compressed", "x-tar", "x-7z", "x-rar")):
        return "archive"
    if suffix in _PROGRAMS or any(x in ctype for x in ("executable", "x-msdownload", "javascript", "x-sh")):
        return "program"
    if suffix in _DOCUMENTS or ctype.startswith("text/") or "officedocument" in ctype or "msword" in ctype:
        return "document"
    if ctype.startswith("image/"):
        return "broken_image"
    if ctype.startswith("video/"):
        return "video"
    if ctype.startswith("audio/"):
        return "audio"
    return "other"


def is_picture_name(name: str) -> bool:
    return bool(name) and PurePath(name.lower()).suffix in _PICTURES


def file_item(name: str, content_type: str, data: bytes) -> Item:
    """A file someone sent: a picture when it decodes as one (re-encoded), else refused by its kind."""
    suffix = PurePath(name.lower()).suffix if name else ""
    if content_type.lower().startswith("image/") or suffix in _PICTURES:
        picture = reencode(data)
        if picture is not None:
            return Item("image", name=name, size=len(data), picture=picture)
    return Item("file", name=name, size=len(data), refused=refused_kind(name, content_type))


# Items travel inside stored platform events (the inbox, encrypted) as JSON: a picture as base64.


def item_to_json(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": item.kind,
        "name": item.name,
        "size": item.size,
        "keywords": list(item.keywords),
        "title": item.title,
        "address": item.address,
        "refused": item.refused,
    }
    if item.picture is not None:
        p = item.picture
        out["picture"] = {
            "type": p.content_type,
            "width": p.width,
            "height": p.height,
            "data": base64.b64encode(p.data).decode("ascii"),
        }
    return out


def item_from_json(data: dict[str, Any]) -> Item:
    p = data.get("picture")
    picture = (
        Picture(str(p["type"]), int(p["width"]), int(p["height"]), base64.b64decode(p["data"]))
        if isinstance(p, dict)
        else None
    )
    return Item(
        kind=str(data.get("kind", "file")),
        name=str(data.get("name", "")),
        size=int(data.get("size", 0)),
        keywords=tuple(str(k) for k in data.get("keywords", [])),
        title=str(data.get("title", "")),
        address=str(data.get("address", "")),
        refused=str(data.get("refused", "")),
        picture=picture,
    )
