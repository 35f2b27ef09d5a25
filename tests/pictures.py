"""Pictures made here for the tests (never downloaded): a phone photo with EXIF and GPS, a screenshot."""

from __future__ import annotations

import io

from PIL import Image

GPS_TAG = 0x8825
MAKE_TAG = 0x010F
ORIENTATION_TAG = 0x0112


def photo_with_gps(width: int = 640, height: int = 480) -> bytes:
    """A JPEG as a phone writes it: its maker, an orientation and where it was taken (GPS) in EXIF."""
    image = Image.new("RGB", (width, height), (200, 120, 40))
    for x in range(0, width, 16):  # something to look at, so that it is not all one colour
        for y in range(0, height, 16):
            image.putpixel((x, y), (0, 0, 0))
    exif = Image.Exif()
    exif[MAKE_TAG] = "PhoneMaker"
    exif[ORIENTATION_TAG] = 1
    exif[GPS_TAG] = {1: "N", 2: (35.0, 41.0, 22.0), 3: "E", 4: (139.0, 41.0, 30.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def screenshot(width: int = 390, height: int = 844) -> bytes:
    """A PNG as a phone's screenshot is."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def exif_of(data: bytes) -> dict[int, object]:
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.getexif())
