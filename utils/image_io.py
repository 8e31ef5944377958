"""The project's one image reader: PNG/JPEG/TIFF (8/16-bit, float) and DICOM to uint8 RGB.

Every image the project sees (training, evaluation, converters, chat/app) goes through
:func:`read_image`, so that all of them see the same pixels:

* 8-bit grayscale, palette and RGB files are read as they are; grayscale is replicated to
  three channels and an alpha channel is dropped (as ``cv2.imread`` does in LISA's code).
* 16-bit, 32-bit integer and float data are mapped to 8 bits as radiology viewers do, never
  clipped silently: ``window="full"`` maps the data's min..max to 0..255, ``"percentile"`` maps
  the 0.5..99.5 % percentiles to 0..255 (the tails saturate, on purpose and documented).
* DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic bytes) is read with pydicom: the modality
  LUT (rescale slope/intercept) is applied, then the file's VOI LUT or window centre/width
  when present (else ``window`` as above), and MONOCHROME1 is inverted.
* The pixel frame is the file's as stored: no EXIF rotation is applied, because the boxes of
  the annotations are given in that frame.
* An image over ``max_pixels`` pixels is refused (a decompression bomb), before it is decoded.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi

DEFAULT_MAX_PIXELS = 100_000_000  # ~100 Mpx; a 43 x 43 cm detector at 0.1 mm is ~18 Mpx
MAX_ASPECT_RATIO = 20  # long side / short side; a long-leg or whole-spine film is about 3
WINDOWS = ("full", "percentile")
PERCENTILE_WINDOW = (0.5, 99.5)
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

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
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageReadError(
            f"image {path} is {width}x{height} pixels, an aspect ratio over "
            f"{MAX_ASPECT_RATIO}:1 that no radiograph has (the model's square input would "
            "squeeze its short side away); check the file, or crop it to the radiograph")


def _check_window(window: str) -> None:
    if window not in WINDOWS:
        raise ValueError(f"window {window!r} is not one of {list(WINDOWS)}")


def _check_exists(path: Path) -> None:
    if not path.is_file():
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
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"image {path} cannot be decoded ({error}); the file may be "
                             "truncated or corrupt: re-export it") from error
    if data.dtype == np.uint8:
        return _to_rgb(data)
    return _to_rgb(to_uint8(data, window, source=f"image {path}"))


def _dicom_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI window, straight to 0..255 (float, same shape)."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0) * 255.0
    if width < 1:
        raise ValueError(f"window width {width} < 1")
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)


def _read_dicom(path: Path, window: str, max_pixels: int) -> np.ndarray:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        _check_pixels(path, int(header.Columns), int(header.Rows), max_pixels)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise ImageReadError(f"DICOM {path} holds {frames} frames; export the radiograph "
                                 "as a single-frame file")
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for broken or compressed files
        raise ImageReadError(
            f"DICOM {path} cannot be read ({type(error).__name__}: {error}); if it is compressed "
            "(JPEG 2000, JPEG-LS), decompress it first (e.g. `gdcmconv --raw`)") from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
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
            function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
            mapped = _dicom_window(values, _first(dataset.WindowCenter),
                                   _first(dataset.WindowWidth), function)
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

    Raises ImageReadError for a missing, unreadable or over-large (``max_pixels``) file.
    """
    path = Path(path)
    _check_exists(path)
    if _is_dicom(path):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            width, height = int(header.Columns), int(header.Rows)
        except Exception as error:  # pydicom raises many types for broken files
            raise ImageReadError(f"DICOM {path} has no readable Rows/Columns "
                                 f"({type(error).__name__}: {error})") from error
        _check_pixels(path, width, height, max_pixels)
        return width, height
    with _open_pil(path, max_pixels) as image:
        try:
            image.verify()
        except Exception as error:  # PIL's verify raises format-specific types
            raise ImageReadError(f"image {path} is corrupt ({error}); re-export it") from error
        return image.size
