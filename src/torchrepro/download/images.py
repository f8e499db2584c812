"""Decoding image files with PIL, for the image_folder source and for predict.

A file is opened only in the formats asked for, its size is checked from the header before
any pixel is decoded, and any warning PIL gives while reading it (EXIF that runs past its end,
a malformed chunk) is an error: PIL reads on past such damage, and a damaged file cannot be
trusted. PIL is imported on first use: the other sources never need it.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np

from torchrepro.core.errors import DataError

Color = Literal["grayscale", "rgb"]
# The suffixes an image folder may hold, and the PIL format of each.
SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
FOLDER_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
FOLDER_KIND = "PNG, JPEG, BMP or WebP"


class TooManyPixels(DataError):
    """An image whose header gives more pixels than the caller allows; nothing was decoded."""

    def __init__(self, path: Path, width: int, height: int, limit: int):
        super().__init__(f"{path}: {width}x{height} is {width * height:,} pixels, over the limit of {limit:,}")
        self.width, self.height = width, height


@contextmanager
def opened(
    path: Path,
    formats: tuple[str, ...],
    kind: str,
    max_pixels: int,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
) -> Iterator:
    """The decoded PIL image of `path` (one of `formats`, described to the user as `kind`),
    for the body to convert. A file that is missing, of another format, truncated or damaged
    is a DataError naming it; one over `max_pixels` is TooManyPixels. `draft(width, height)`
    may give a smaller size for JPEG's DCT scaling. Inside the body PIL's warnings are advice
    about the conversions chosen there, not about the file: silenced."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # max_pixels replaces PIL's check, which warns before it refuses
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            with Image.open(path, formats=formats) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise TooManyPixels(path, width, height, max_pixels)
                if image.format == "JPEG" and draft and (size := draft(width, height)):
                    image.draft(image.mode, size)  # DCT scaling: 1/2, 1/4 or 1/8
                image.load()
                image.getexif()  # parsed now, while its warnings are about the file
                if damage := [w for w in caught if issubclass(w.category, UserWarning)]:
                    reason = " ".join(str(damage[0].message).split())[:200]
                    raise DataError(f"{path}: not a readable {kind} image ({reason})")
                warnings.simplefilter("ignore", UserWarning)
                yield image
        for w in caught:  # other kinds (a DeprecationWarning) are shown as they would have been
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    # UnidentifiedImageError is an OSError; truncated files raise OSError on decode; PIL reports
    # some malformed chunks as SyntaxError, struct.error or EOFError.
    except (OSError, ValueError, EOFError, SyntaxError, struct.error) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable {kind} image ({reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def flatten_transparency(image):
    """A PIL image with 8-bit channels (mode L, RGB or RGBA); transparent pixels count as white
    paper, as in a drawing exported from a canvas. 16-bit grayscale becomes mode I, whole
    32-bit values the caller scales."""
    from PIL import Image

    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode in ("1", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA", "LA"):
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    if transparent:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image


def resized_pixels(image, color: Color, size: tuple[int, int]) -> np.ndarray:
    """A decoded image as uint8 pixels of `size` (height, width): (H, W) grayscale or (3, H, W)
    RGB. Turned upright by its EXIF orientation, transparency on white, stretched to the size
    (as torchvision's Resize((h, w)) does) with PIL's antialiased bilinear filter."""
    from PIL import Image, ImageOps

    image = flatten_transparency(ImageOps.exif_transpose(image))
    if image.mode == "I":  # 16-bit grayscale: 65535 -> 255
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257, 0, 255)
        image = Image.fromarray(np.rint(scaled).astype(np.uint8))
    image = image.convert("L" if color == "grayscale" else "RGB")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels if color == "grayscale" else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _draft_to(size: tuple[int, int]) -> Callable[[int, int], tuple[int, int]]:
    return lambda width, height: (size[1], size[0])  # PIL decodes at least this large


def read_pixels(path: str | Path, color: Color, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """One image file (PNG, JPEG, BMP or WebP) as resized_pixels gives it; errors name the file."""
    path = Path(path)
    with opened(path, FOLDER_FORMATS, FOLDER_KIND, max_pixels, _draft_to(size)) as image:
        return resized_pixels(image, color, size)
