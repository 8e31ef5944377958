"""The project's one image reader: PNG/JPEG/TIFF (8/16-bit, float) and DICOM to uint8 RGB.

Every image the project sees (training, evaluation, converters, chat/app) goes through
:func:`read_image`, so that all of them see the same pixels:

* 8-bit grayscale, palette and RGB files are read as they are; grayscale is replicated to
  three channels and an alpha channel is dropped (as ``cv2.imread`` does in LISA's code).
* 16-bit, 32-bit integer and float data are mapped to 8 bits as radiology viewers do, never
  clipped silently: ``window="full"`` maps the data's min..max to 0..255, ``"percentile"`` maps
  the 0.5..99.5 % percentiles to 0..255 (the tails saturate, on purpose and documented).
  A TIFF stored white-is-zero is inverted, as PIL already does for its 8-bit data. Colour or
  alpha files of 16 bits per channel are refused: PIL keeps only their high byte.
* DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic bytes) is read with pydicom: the modality
  LUT (rescale slope/intercept) is applied, then the file's VOI LUT or window centre/width
  when present (else ``window`` as above), and MONOCHROME1 is inverted; PALETTE COLOR
  indices go through the file's palette.
* The pixel frame is the file's as stored: no EXIF rotation is applied, because the boxes of
  the annotations are given in that frame.
* An image over ``max_pixels`` pixels is refused (a decompression bomb), before it is decoded.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

DEFAULT_MAX_PIXELS = 100_000_000  # ~100 Mpx; a 43 x 43 cm detector at 0.1 mm is ~18 Mpx
MAX_ASPECT_RATIO = 20  # long side / short side; a long-leg or whole-spine film is about 3
WINDOWS = ("full", "percentile")
PERCENTILE_WINDOW = (0.5, 99.5)
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# PIL's raw modes that unpack 16 bits per sample into an 8-bit mode by keeping the high byte
HIGH_BYTE_RAWMODE = re.compile(r";16[BLN]$")
TIFF_BITS_PER_SAMPLE = 258
TIFF_PHOTOMETRIC = 262  # PhotometricInterpretation; 0 is WhiteIsZero
TIFF_WHITE_IS_ZERO = 0
DICOM_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PYDICOM_DECODER_LOGGER = "pydicom.pixels.decoders.base"

# PIL's bomb limit is a module global; it is set to the caller's limit while a file is opened.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file and what to do."""


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` or of an aspect ratio over ``MAX_ASPECT_RATIO``."""
    if width * height > max_pixels:
        raise ImageReadError(
            f"image {path} has {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a possible decompression bomb); downscale it, or raise "
            "--max_image_pixels if the image is genuine")
    if min(width, height) < 1:
        raise ImageReadError(f"image {path} is {width}x{height} pixels: it holds no image; "
                             "check the file's header, or re-export it")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageReadError(
            f"image {path} is {width}x{height} pixels, an aspect ratio over "
            f"{MAX_ASPECT_RATIO}:1 that no radiograph has (the model's square input would "
            "squeeze its short side away); check the file, or crop it to the radiograph")


def _check_window(window: str) -> None:
    if window not in WINDOWS:
        raise ValueError(f"window {window!r} is not one of {list(WINDOWS)}")


def _check_exists(path: Path) -> None:
    """Refuse a path that is not a readable regular file, saying what it is instead."""
    if path.is_file():
        return
    if path.is_dir():
        raise ImageReadError(f"image {path} is a directory, not an image file; give the path "
                             "of an image file")
    if path.exists():
        raise ImageReadError(f"image {path} is not a regular file (a device, pipe or socket); "
                             "give the path of an image file")
    if path.is_symlink():
        raise ImageReadError(f"image {path} is a symbolic link to {os.readlink(path)}, which "
                             "does not exist or loops back on itself; fix the link or give "
                             "the image file's own path")
    raise ImageReadError(f"image {path} does not exist (check the path and the image root)")


def to_uint8(values: np.ndarray, window: str = "full", *, source: str = "image") -> np.ndarray:
    """Map integer or float data (H, W) or (H, W, C) to uint8 with a viewer's window.

    ``"full"`` maps min..max to 0..255; ``"percentile"`` maps the 0.5..99.5 % percentiles to
    0..255 and saturates the tails. A constant image maps to 0. Non-finite values are an error.
    """
    _check_window(window)
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        raise ImageReadError(f"{source} holds {int((~finite).sum())} non-finite pixel value(s) "
                             "(NaN or inf); fix or re-export the image")
    if window == "full":
        low, high = float(data.min()), float(data.max())
    else:
        low, high = (float(v) for v in np.percentile(data, PERCENTILE_WINDOW))
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (np.clip(data, low, high) - low) / (high - low) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _to_rgb(gray_or_rgb: np.ndarray) -> np.ndarray:
    if gray_or_rgb.ndim == 2:
        return np.repeat(gray_or_rgb[:, :, None], 3, axis=2)
    return np.ascontiguousarray(gray_or_rgb[:, :, :3])


def _rawmode(image: Image.Image) -> str:
    """The raw mode PIL will decode the file's first tile with ("" when it does not say)."""
    if not image.tile:
        return ""
    args = image.tile[0].args
    if isinstance(args, str):
        return args
    return str(args[0]) if isinstance(args, tuple) and args else ""


def _tiff_bits(image: Image.Image) -> tuple[int, ...]:
    """A TIFF's bits per sample (tag 258), () for other formats: PIL reads a 16-bit colour
    TIFF stored by planes with 8-bit raw modes, so its raw mode alone does not show it."""
    if image.format != "TIFF":
        return ()
    bits = image.tag_v2.get(TIFF_BITS_PER_SAMPLE, ())
    return tuple(int(b) for b in (bits if isinstance(bits, tuple) else (bits,)))


def _open_pil(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) with PIL's bomb check set to ``max_pixels``, then check it ourselves."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageReadError(
                f"image {path} is over the limit of {max_pixels:,} pixels: a possible "
                "decompression bomb; downscale it, or raise --max_image_pixels if it is genuine"
            ) from error
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageReadError(f"image {path} cannot be read ({error}); check that it is a "
                                 "PNG, JPEG, TIFF or DICOM file and not truncated") from error
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        _check_pixels(path, *image.size, max_pixels)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ImageReadError(f"image {path} holds {frames} frames (a multi-page TIFF or an "
                                 "animation); save the radiograph as a single-frame image")
        if image.mode in EIGHT_BIT_MODES and (HIGH_BYTE_RAWMODE.search(_rawmode(image))
                                              or max(_tiff_bits(image), default=8) > 8):
            raise ImageReadError(
                f"image {path} stores 16 bits per channel with colour or alpha channels, which "
                "PIL can read only as their high 8 bits (a 12-bit radiograph would come out "
                "near-black, with 16 grey levels); save it as a 16-bit grayscale image (one "
                "channel, no alpha) or as 8-bit")
    except ImageReadError:
        image.close()
        raise
    return image


def _read_pil(path: Path, window: str, max_pixels: int) -> np.ndarray:
    image = _open_pil(path, max_pixels)
    try:
        with image:
            image.load()
            if image.mode in EIGHT_BIT_MODES:
                return np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))[:, :, :3]
            data = np.asarray(image)
            # PIL inverts WhiteIsZero TIFFs of up to 8 bits itself, but not deeper ones
            white_is_zero = (image.format == "TIFF"
                             and image.tag_v2.get(TIFF_PHOTOMETRIC) == TIFF_WHITE_IS_ZERO)
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"image {path} cannot be decoded ({error}); the file may be "
                             "truncated or corrupt: re-export it") from error
    gray = data if data.dtype == np.uint8 else to_uint8(data, window, source=f"image {path}")
    return _to_rgb(255 - gray if white_is_zero else gray)


def _dicom_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI window, straight to 0..255 (float, same shape).

    The parameters are those :func:`_window_parameters` checked.
    """
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0) * 255.0
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    if value is None or value == "":
        raise ValueError("the element is empty")
    return float(value)


def _window_parameters(dataset: pydicom.Dataset) -> tuple[float, float, str]:
    """The first window centre and width and the VOI LUT function, checked (PS3.3 C.11.2.1.2).

    Raises ValueError for an empty or non-finite value, an unknown function, or a width below
    1 (LINEAR) or not above 0 (LINEAR_EXACT, SIGMOID): such a window would silently give a
    blank or inverted image.
    """
    function = str(dataset.get("VOILUTFunction", "") or "LINEAR").upper()
    if function not in DICOM_VOI_FUNCTIONS:
        raise ValueError(f"VOI LUT function {function!r} is not one of {list(DICOM_VOI_FUNCTIONS)}")
    try:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
    except ValueError as error:
        raise ValueError(f"window centre/width unusable: {error}") from error
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ValueError(f"window centre {center} / width {width} is not finite")
    if function == "LINEAR" and width < 1:
        raise ValueError(f"window width {width} is below 1, the least LINEAR allows")
    if width <= 0:
        raise ValueError(f"window width {width} is not above 0, as {function} requires")
    return center, width, function


class _DropTracebacksOfThread(logging.Filter):
    """Drop the log records with a traceback that one thread emits."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.thread == self.thread)


@contextmanager
def _quiet_decoder_tracebacks() -> Iterator[None]:
    """Silence pydicom's per-plugin decoder tracebacks in this thread while it decodes.

    pydicom logs each failing plugin's traceback at ERROR level, then raises a RuntimeError
    that lists the same failures; that error becomes our ImageReadError, so the tracebacks
    only bury the message (``chat.py`` showed ~20 traceback lines before it).
    """
    logger = logging.getLogger(PYDICOM_DECODER_LOGGER)
    dropper = _DropTracebacksOfThread(threading.get_ident())
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _dicom_header(path: Path, max_pixels: int) -> pydicom.Dataset:
    """The DICOM header, checked: a Part 10 file of one frame of pixels within ``max_pixels``."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as error:
        raise ImageReadError(
            f"DICOM {path} cannot be read: it has no DICOM file header (no 'DICM' at byte "
            f"{DICOM_MAGIC_OFFSET}); if it is a PNG/JPEG/TIFF, give it that suffix, and if it "
            "is an old headerless DICOM, re-save it with a file header (e.g. `dcmconv` or "
            "`gdcmconv`)") from error
    except Exception as error:  # pydicom raises many types for broken files
        raise ImageReadError(f"DICOM {path} cannot be read ({type(error).__name__}: {error}); "
                             "the file may be truncated or corrupt: re-export it") from error
    if "Rows" not in header or "Columns" not in header:
        raise ImageReadError(
            f"DICOM {path} cannot be read as an image: it has no Rows/Columns (a report, a "
            "presentation state, a DICOMDIR or a corrupt header); give the DICOM file of the "
            "radiograph itself, or export it as a PNG")
    try:
        width, height = int(header.Columns), int(header.Rows)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as error:
        raise ImageReadError(f"DICOM {path} has an unreadable Rows/Columns/NumberOfFrames "
                             f"({error}); fix its header or export it as a PNG") from error
    _check_pixels(path, width, height, max_pixels)
    if frames != 1:
        raise ImageReadError(f"DICOM {path} holds {frames} frames; export the radiograph "
                             "as a single-frame file")
    return header


def _read_dicom(path: Path, window: str, max_pixels: int) -> np.ndarray:
    _dicom_header(path, max_pixels)
    try:
        dataset = pydicom.dcmread(path)
        if not any(keyword in dataset for keyword in DICOM_PIXEL_KEYWORDS):
            raise ImageReadError(f"DICOM {path} cannot be read as an image: it has no pixel "
                                 "data; give the DICOM file of the radiograph itself, or "
                                 "export it as a PNG")
        with _quiet_decoder_tracebacks():
            pixels = dataset.pixel_array
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for broken or compressed files
        raise ImageReadError(
            f"DICOM {path} cannot be read ({type(error).__name__}: {error}); if it is compressed "
            "(JPEG 2000, JPEG-LS), decompress it first (e.g. `gdcmconv --raw`)") from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        try:
            colours = apply_color_lut(pixels, dataset)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
            raise ImageReadError(f"DICOM {path} is PALETTE COLOR with an unusable palette "
                                 f"({error}); fix its header or export it as a PNG") from error
        scale = 255.0 / np.iinfo(colours.dtype).max  # the palette's 8- or 16-bit entries
        return _to_rgb(np.rint(colours.astype(np.float64) * scale).astype(np.uint8))
    if not photometric.startswith("MONOCHROME"):
        if pixels.dtype == np.uint8:
            return _to_rgb(pixels)
        return _to_rgb(to_uint8(pixels, window, source=f"DICOM {path}"))
    try:
        modality = apply_modality_lut(pixels, dataset)
        values = modality.astype(np.float64)
        if "VOILUTSequence" in dataset:
            out_bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
            if modality.dtype.kind == "f":
                modality = np.rint(modality).astype(np.int64)  # LUTs are indexed by integers
            mapped = apply_voi(modality, dataset).astype(np.float64) / (2 ** out_bits - 1) * 255.0
        elif "WindowCenter" in dataset and "WindowWidth" in dataset:
            mapped = _dicom_window(values, *_window_parameters(dataset))
        else:
            mapped = to_uint8(values, window, source=f"DICOM {path}").astype(np.float64)
    except ImageReadError:
        raise
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise ImageReadError(f"DICOM {path} has an unusable modality/VOI LUT or window "
                             f"({error}); fix its header or export it as a PNG") from error
    gray = np.rint(np.clip(mapped, 0.0, 255.0)).astype(np.uint8)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return _to_rgb(gray)


def read_image(path: str | Path, *, window: str = "full",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), in the pixel frame of the file as given.

    Arguments:
      path: a PNG/JPEG/TIFF/... file PIL reads, or a DICOM file.
      window: how 16-bit and float data are mapped to 8 bits, one of :data:`WINDOWS`.
      max_pixels: refuse images with more pixels than this (checked before decoding).
    Raises:
      ImageReadError naming the file and what to do.
    """
    _check_window(window)
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        return _read_dicom(path, window, max_pixels)
    return _read_pil(path, window, max_pixels)


def image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file, from its header where possible.

    Raises ImageReadError for a missing, unreadable or over-large (``max_pixels``) file, and
    for what :func:`read_image` refuses from the header alone (multiple frames, 16-bit colour).
    """
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        header = _dicom_header(path, max_pixels)
        return int(header.Columns), int(header.Rows)
    with _open_pil(path, max_pixels) as image:
        try:
            image.verify()
        except Exception as error:  # PIL's verify raises format-specific types
            raise ImageReadError(f"image {path} is corrupt ({error}); re-export it") from error
        return image.size
