"""Reading one image safely and fast: format allow-list, decompression-bomb guard, EXIF orientation, RGB conversion.

Image folders are untrusted input, so every file is opened through :func:`open_image`, which only lets PIL use the
plain raster decoders (no EPS/Ghostscript, no PSD, ...) and refuses images over PIL's decompression-bomb limit.
Training reads every image once per epoch, so :func:`decode_region` is built for speed: a JPEG is decoded at the
smallest DCT scale (``Image.draft``) that keeps the region at or above the output resolution, the crop and the resize
are one resampling pass, on torch's antialiased uint8 kernels where they apply (PIL's filters at 2-3x PIL's speed),
and EXIF orientation is applied to the small output, not the photo. Evaluation uses
:func:`decode_resized`, the exact steps of transformers' image processors.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# Extensions looked at when listing a folder; anything else (.DS_Store, Thumbs.db, README.txt) is not an image.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Decoders PIL may use. Plain raster formats only: EPS would run Ghostscript, and exotic plugins are attack surface.
SAFE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # JPEG covers MPO (multi-picture) files
_JPEG_FORMATS = ("JPEG", "MPO")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "F", *_SIXTEEN_BIT_MODES}
)
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as in ``PIL.ImageOps.exif_transpose``).
_UPRIGHT = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}

# PIL filters that torch reproduces (antialiased, a = -0.5 for bicubic) on uint8 images.
_TORCH_FILTERS = {PIL.Image.Resampling.BILINEAR: "bilinear", PIL.Image.Resampling.BICUBIC: "bicubic"}

ImageSource = str | os.PathLike | bytes | Mapping[str, Any] | PIL.Image.Image | np.ndarray
Box = tuple[float, float, float, float]


class BadImageError(ValueError):
    """An image that cannot be read; ``source`` names the file (or the size of the in-memory bytes)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"Cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def describe(source: ImageSource) -> str:
    """A short name for ``source`` in messages: its path when it has one."""
    if isinstance(source, Mapping):
        path, data = source.get("path"), source.get("bytes")
        return str(path) if path else f"<{len(data or b'')} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, PIL.Image.Image):
        return getattr(source, "filename", "") or f"<{source.mode} image {source.width}x{source.height}>"
    return f"<array {getattr(source, 'shape', '?')}>"


def source_key(source: ImageSource) -> int:
    """A stable 64-bit key for an image: a hash of its path when it has one, else of its bytes or pixels."""
    if isinstance(source, Mapping) and source.get("path"):
        data = os.fspath(source["path"]).encode()
    elif isinstance(source, Mapping):
        data = source.get("bytes") or b""
    elif isinstance(source, (str, os.PathLike)):
        data = os.fspath(source).encode()
    elif isinstance(source, bytes):
        data = source
    elif isinstance(source, PIL.Image.Image):
        filename = getattr(source, "filename", "")
        data = filename.encode() if filename else source.tobytes()
    else:
        data = np.ascontiguousarray(source).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def open_image(source: ImageSource) -> PIL.Image.Image:
    """Open an image lazily (header only) from a path, encoded bytes, a ``datasets`` ``{"path", "bytes"}`` dict,
    a PIL image or an ``HxW[xC]`` uint8 array.

    Raises :class:`BadImageError` for files PIL cannot identify, formats outside :data:`SAFE_FORMATS` and images
    over ``PIL.Image.MAX_IMAGE_PIXELS`` (raise or disable that limit to accept larger images).
    """
    if isinstance(source, PIL.Image.Image):
        return source
    if isinstance(source, np.ndarray):
        try:
            return PIL.Image.fromarray(source)
        except (TypeError, ValueError) as exc:
            raise BadImageError(describe(source), f"not an image array ({exc})") from exc
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if data is None and not path:
            raise BadImageError(describe(source), "neither 'path' nor 'bytes' is set")
        fp: Any = io.BytesIO(data) if data is not None else os.fspath(path)
    elif isinstance(source, bytes):
        fp = io.BytesIO(source)
    else:
        fp = os.fspath(source)
    try:
        image = PIL.Image.open(fp, formats=SAFE_FORMATS)
    except PIL.Image.DecompressionBombError as exc:
        raise BadImageError(describe(source), f"over PIL's decompression-bomb limit ({exc})") from exc
    except FileNotFoundError as exc:
        raise BadImageError(describe(source), "file not found") from exc
    except Exception as exc:  # PIL signals unreadable input with many exception types
        raise BadImageError(describe(source), _reason(exc)) from exc
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        image.close()
        raise BadImageError(
            describe(source),
            f"{image.width}x{image.height} pixels is over PIL's decompression-bomb limit of {limit} "
            "(raise PIL.Image.MAX_IMAGE_PIXELS to accept it)",
        )
    if image.width < 1 or image.height < 1:
        raise BadImageError(describe(source), f"empty image ({image.width}x{image.height})")
    return image


def _reason(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    return "not an image file" if isinstance(exc, PIL.UnidentifiedImageError) else message


def check_image(source: ImageSource) -> None:
    """Decode ``source`` cheaply enough to scan a whole dataset; raise :class:`BadImageError` if it is unreadable.

    JPEGs are decoded at 1/8 scale, which still runs the entropy decoder over the whole file, so truncated files are
    caught at a fraction of the cost of a full decode.
    """
    image = open_image(source)
    try:
        if image.format in _JPEG_FORMATS:
            image.draft("RGB", (1, 1))
        image.load()
        if image.mode not in _CONVERTIBLE_MODES:
            raise BadImageError(describe(source), f"unsupported color mode {image.mode!r}")
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(describe(source), _reason(exc)) from exc
    finally:
        image.close()


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation (1-8) of ``image``; 1 when it has none. Reading it does not decode the pixels of a JPEG."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block must not make a decodable image unreadable
        return 1
    return orientation if orientation in _UPRIGHT else 1


def upright(image: PIL.Image.Image, orientation: int | None = None) -> PIL.Image.Image:
    """``image`` with its EXIF orientation applied (itself when it has none)."""
    orientation = exif_orientation(image) if orientation is None else orientation
    return image.transpose(_UPRIGHT[orientation]) if orientation > 1 else image


def upright_size(image: PIL.Image.Image, orientation: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of ``image`` once its EXIF orientation is applied."""
    orientation = exif_orientation(image) if orientation is None else orientation
    return (image.height, image.width) if orientation >= 5 else image.size


def _box_to_stored(box: Box, orientation: int, size: tuple[int, int]) -> Box:
    """Map a box in upright coordinates to the coordinates of the image as stored (before EXIF orientation)."""
    width, height = size
    inverse = {
        1: lambda u, v: (u, v),
        2: lambda u, v: (width - u, v),
        3: lambda u, v: (width - u, height - v),
        4: lambda u, v: (u, height - v),
        5: lambda u, v: (v, u),
        6: lambda u, v: (v, height - u),
        7: lambda u, v: (width - v, height - u),
        8: lambda u, v: (width - v, u),
    }[orientation]
    (x0, y0), (x1, y1) = inverse(box[0], box[1]), inverse(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any readable mode to 8-bit RGB the way transformers' processors do.

    Transparency (alpha bands, or a palette/grayscale transparency key) is composited onto white; 16-bit grayscale
    is scaled to 8 bits instead of clipped, which is what a plain ``convert("RGB")`` would do.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.float32) * (255.0 / 65535.0)
        image = PIL.Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = PIL.Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def draft_scale(image: PIL.Image.Image, box: Box, size: tuple[int, int]) -> int:
    """Decode ``image`` at the smallest JPEG DCT scale (1/2, 1/4, 1/8) at which ``box`` still covers at least
    ``size`` ``(width, height)`` pixels; returns the reduction (1 when none applies, or for other formats).

    DCT-domain scaling skips most of the inverse DCT, upsampling and colour work; since the box is never brought
    below the output resolution, the resize that follows only ever shrinks it. It is not pixel-identical to
    a full decode followed by a resize, so only training uses it by default.
    """
    factor = min((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1])
    reduction = next((r for r in (8, 4, 2) if r <= factor), 1)
    if reduction == 1 or image.format not in _JPEG_FORMATS:
        return 1
    # draft() decodes at scale min(width // requested width, height // requested height), rounded down to 1, 2, 4
    # or 8: floor division here makes that exactly ``reduction`` (a ceiling would miss it for odd sizes).
    width = image.width
    drafted = image.draft("RGB", (width // reduction, image.height // reduction))
    return round(width / drafted[1][2]) if drafted is not None else 1


def resize_box(image: PIL.Image.Image, box: Box, size: tuple[int, int], resample: int) -> np.ndarray:
    """``image.resize(size, resample, box=box)`` for an RGB ``image``, as a ``(height, width, 3)`` uint8 array.

    A whole-pixel box with a bilinear or bicubic filter runs on torch's antialiased uint8 kernels, which reproduce
    PIL's filters (within 1-2 grey levels) at 2-3x its speed. They crop first, so there the filter does not read
    past the box edges (torchvision's ``resized_crop``); only the outermost output pixels can tell.
    """
    mode = _TORCH_FILTERS.get(resample)
    if mode is None or not all(float(v).is_integer() for v in box):
        return np.asarray(image.resize(size, resample, box=box))
    # A writable copy (torch does not wrap read-only arrays); as (1, 3, H, W) it has channels-last strides, the
    # layout of torch's vectorised uint8 path.
    region = np.array(image.crop(tuple(int(v) for v in box)))
    pixels = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(pixels, size=(size[1], size[0]), mode=mode, antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).numpy()


def decode_region(
    image: PIL.Image.Image,
    box: Box,
    size: tuple[int, int],
    resample: int,
    *,
    reduce: bool = False,
    source: str | None = None,
) -> np.ndarray:
    """Decode ``box`` (upright coordinates) of ``image``, resized to ``size`` ``(width, height)``, as an
    ``(height, width, 3)`` RGB uint8 array.

    Equivalent to ``to_rgb(exif_transpose(image)).resize(size, resample, box=box)``, done faster: the box is mapped
    to the stored orientation and only the small output is transposed, and the resize is :func:`resize_box`. With
    ``reduce``, a JPEG is first decoded at the smallest scale that keeps the box at or above ``size``
    (:func:`draft_scale`).
    """
    try:
        orientation = exif_orientation(image)
        stored_box = _box_to_stored(box, orientation, image.size)
        stored_size = size if orientation < 5 else (size[1], size[0])
        if reduce:
            reduction = draft_scale(image, stored_box, stored_size)
            stored_box = tuple(v / reduction for v in stored_box)
        region = resize_box(to_rgb(image), _clip_box(stored_box, image.size), stored_size, resample)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many exception types on corrupt data, decoded lazily here
        raise BadImageError(source or describe(image), _reason(exc)) from exc
    if orientation > 1:
        region = np.asarray(PIL.Image.fromarray(region).transpose(_UPRIGHT[orientation]))
    return region


def decode_resized(
    image: PIL.Image.Image,
    size: tuple[int, int],
    resample: int,
    *,
    crop: Box | None = None,
    reduce: bool = False,
    source: str | None = None,
) -> PIL.Image.Image:
    """Decode ``image`` upright in RGB, resize it to ``size`` ``(width, height)`` and cut ``crop`` from the result.

    The exact steps of transformers' image processors (exif-transposed by ``datasets``, converted, resized, center
    cropped), kept in this order because resizing a box in one pass rounds differently (up to 2 grey levels).
    """
    try:
        orientation = exif_orientation(image)
        if reduce:
            stored_size = size if orientation < 5 else (size[1], size[0])
            draft_scale(image, (0, 0, image.width, image.height), stored_size)
        resized = to_rgb(upright(image, orientation)).resize(size, resample)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many exception types on corrupt data, decoded lazily here
        raise BadImageError(source or describe(image), _reason(exc)) from exc
    return resized.crop(tuple(int(v) for v in crop)) if crop is not None else resized


def _clip_box(box: Box, size: tuple[int, int]) -> Box:
    # Scaling to a reduced decode can overshoot the last (partial) block by a fraction of a pixel.
    return max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(size[0])), min(box[3], float(size[1]))
