"""utils.image_io on odd inputs: each is read correctly or refused with a message naming the file.

One row per input: how to build it in ``tmp_path``, then either the pattern its ImageReadError
must match or the pixels ``read_image`` must return.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless,
)

from tests.test_image_io import RAMP_12BIT, write_dicom
from utils.image_io import ImageReadError, image_size, read_image, to_uint8

RAMP_8BIT = (RAMP_12BIT // 16).astype(np.uint8)


def png16(path: Path, channels: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG (PIL cannot write one with several channels): 2 = RGB, 4 = LA, 6 = RGBA."""
    height, width = channels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in channels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def tiff_rgb16(path: Path, rgb: np.ndarray, planar: bool = False) -> Path:
    """An uncompressed little-endian RGB TIFF of 16 bits per sample (PIL cannot write one),
    its samples interleaved, or with ``planar`` stored as three planes of one strip each."""
    height, width, _ = rgb.shape
    planes = [rgb[..., c] for c in range(3)] if planar else [rgb]
    strips = [plane.astype("<u2").tobytes() for plane in planes]
    bits_offset, data_offset = 8, 14
    starts = [data_offset + sum(map(len, strips[:i])) for i in range(len(strips))]
    arrays_offset = data_offset + sum(map(len, strips))  # strip offsets, then byte counts
    ifd_offset = arrays_offset + (8 * len(strips) if planar else 0)
    offsets = (len(strips), arrays_offset) if planar else (1, data_offset)
    counts = (len(strips), arrays_offset + 4 * len(strips)) if planar else (1, len(strips[0]))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_offset), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, *offsets), (277, 3, 1, 3), (278, 3, 1, height),
               (279, 4, *counts), (284, 3, 1, 2 if planar else 1)]
    out = b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<3H", 16, 16, 16)
    out += b"".join(strips)
    if planar:
        out += struct.pack(f"<{len(strips)}I", *starts)
        out += struct.pack(f"<{len(strips)}I", *map(len, strips))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        inline = kind == 3 and count == 1
        out += struct.pack("<HHIHH" if inline else "<HHII", tag, kind, count, value,
                           *((0,) if inline else ()))
    path.write_bytes(out + struct.pack("<I", 0))
    return path


def symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    return tmp_path / "a.png"


def directory(tmp_path: Path) -> Path:
    (tmp_path / "images.png").mkdir()
    return tmp_path / "images.png"


def dangling_symlink(tmp_path: Path) -> Path:
    (tmp_path / "x.png").symlink_to(tmp_path / "gone.png")
    return tmp_path / "x.png"


def fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe.png")
    return tmp_path / "pipe.png"


def white_is_zero_tiff(values: np.ndarray) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        Image.fromarray(values).save(tmp_path / "wiz.tiff", tiffinfo={262: 0})
        return tmp_path / "wiz.tiff"
    return build


def palette_dicom(tmp_path: Path) -> Path:
    """PALETTE COLOR indices 255 - v with a 16-bit palette mapping index i to 255 - i."""
    table = ((255 - np.arange(256)) * 257).astype("<u2").tobytes()
    palette = {}
    for colour in ("Red", "Green", "Blue"):
        palette[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        palette[f"{colour}PaletteColorLookupTableData"] = table
    return write_dicom(tmp_path / "palette.dcm", (255 - RAMP_8BIT).astype(np.uint8),
                       "PALETTE COLOR", 8, **palette)


def png_named_dcm(tmp_path: Path) -> Path:
    Image.fromarray(RAMP_8BIT).save(tmp_path / "x.dcm", "PNG")
    return tmp_path / "x.dcm"


def dicom_without_pixel_data(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(write_dicom(tmp_path / "header.dcm", RAMP_12BIT))
    del ds.PixelData
    ds.save_as(tmp_path / "header.dcm")
    return tmp_path / "header.dcm"


def dicom_rows(rows: int) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        ds = pydicom.dcmread(write_dicom(tmp_path / "rows.dcm", RAMP_12BIT))
        ds.Rows = rows
        ds.save_as(tmp_path / "rows.dcm")
        return tmp_path / "rows.dcm"
    return build


def windowed(name: str, **elements) -> Callable[[Path], Path]:
    return lambda tmp_path: write_dicom(tmp_path / name, RAMP_12BIT, **elements)


def full_range(values: np.ndarray) -> np.ndarray:
    return np.repeat(to_uint8(values)[:, :, None], 3, axis=2)


def gray_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def ppm16(tmp_path: Path) -> Path:
    """A 16-bit RGB PPM whose maxval (4095) tells PIL the range: PIL scales it itself."""
    data = np.dstack([RAMP_12BIT] * 3).astype(">u2").tobytes()
    (tmp_path / "a.ppm").write_bytes(b"P6 40 30 4095\n" + data)
    return tmp_path / "a.ppm"


RGB16 = np.dstack([RAMP_12BIT] * 3)
OPAQUE16 = np.full_like(RAMP_12BIT, 65535)


def case(name: str, build: Callable[[Path], Path], expected: object, *marks) -> object:
    """One row of a table: the input's name, how to build it and what must come out."""
    return pytest.param(build, expected, id=name, marks=marks)


REFUSED = [  # (id, build(tmp_path) -> path, pattern of the ImageReadError after the file name)
    case("directory", directory, "is a directory, not an image file"),
    case("symlink loop", symlink_loop,
         r"is a symbolic link to .*b\.png, which does not exist or loops"),
    case("dangling symlink", dangling_symlink, r"is a symbolic link to .*gone\.png"),
    case("fifo", fifo, "is not a regular file"),
    case("16-bit RGB PNG", lambda t: png16(t / "rgb16.png", RGB16, 2),
         "stores 16 bits per channel with colour or alpha"),
    case("16-bit LA PNG", lambda t: png16(t / "la16.png", np.dstack([RAMP_12BIT, OPAQUE16]), 4),
         "16 bits per channel"),
    case("16-bit RGBA PNG", lambda t: png16(t / "rgba16.png", np.dstack([RGB16, OPAQUE16]), 6),
         "16 bits per channel"),
    case("16-bit RGB TIFF", lambda t: tiff_rgb16(t / "rgb16.tiff", RGB16), "16 bits per channel"),
    case("16-bit RGB TIFF by planes", lambda t: tiff_rgb16(t / "planes.tiff", RGB16, planar=True),
         "16 bits per channel"),
    case("DICOM without an image", lambda t: write_dicom(t / "sr.dcm", None),
         "cannot be read as an image: it has no Rows/Columns"),
    case("DICOM without pixel data", dicom_without_pixel_data, "it has no pixel data"),
    case("DICOM with 0 rows", dicom_rows(0), "is 40x0 pixels: it holds no image"),
    case("PNG named .dcm", png_named_dcm, "has no DICOM file header .*give it that suffix"),
    case("DICOM LINEAR_EXACT width 0",
         windowed("a.dcm", WindowCenter=2048, WindowWidth=0, VOILUTFunction="LINEAR_EXACT"),
         "width 0.0 is not above 0"),
    case("DICOM SIGMOID width -5",
         windowed("a.dcm", WindowCenter=2048, WindowWidth=-5, VOILUTFunction="SIGMOID"),
         "width -5.0 is not above 0"),
    case("DICOM LINEAR width 0", windowed("a.dcm", WindowCenter=2048, WindowWidth=0),
         "width 0.0 is below 1"),
    case("DICOM NaN window centre", windowed("a.dcm", WindowCenter="NaN", WindowWidth=400),
         "window centre nan / width 400.0 is not finite",
         pytest.mark.filterwarnings("ignore:Invalid value for VR DS")),
    case("DICOM unknown VOI function",
         windowed("a.dcm", WindowCenter=2048, WindowWidth=4096, VOILUTFunction="LINEARX"),
         "'LINEARX' is not one of"),
    case("DICOM empty window centre", windowed("a.dcm", WindowCenter=None, WindowWidth=None),
         "window centre/width unusable: the element is empty"),
]


@pytest.mark.parametrize("build, message", REFUSED)
def test_refused_with_the_file_named(tmp_path, build, message):
    path = build(tmp_path)
    with pytest.raises(ImageReadError, match=message) as raised:
        read_image(path)
    assert str(raised.value).split(" ", 2)[1] == str(path)  # "image|DICOM <path> ..."


ACCEPTED = [  # (id, build(tmp_path) -> path, the pixels read_image must return)
    case("16-bit white-is-zero TIFF is inverted", white_is_zero_tiff(4095 - RAMP_12BIT),
         full_range(RAMP_12BIT)),
    case("float white-is-zero TIFF is inverted",
         white_is_zero_tiff(-RAMP_12BIT.astype(np.float32)), full_range(RAMP_12BIT)),
    # PIL inverts 8-bit white-is-zero data both when it writes and when it reads them
    case("8-bit white-is-zero TIFF is inverted once", white_is_zero_tiff(RAMP_8BIT),
         gray_rgb(RAMP_8BIT)),
    case("DICOM PALETTE COLOR goes through its palette", palette_dicom, gray_rgb(RAMP_8BIT)),
    case("16-bit PPM with a maxval is scaled by PIL, not refused", ppm16,
         gray_rgb(np.rint(RAMP_12BIT / 4095 * 255).astype(np.uint8))),
]


@pytest.mark.parametrize("build, expected", ACCEPTED)
def test_read_correctly(tmp_path, build, expected):
    out = read_image(build(tmp_path))
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("build, message", [
    case("multi-frame DICOM", lambda t: write_dicom(t / "two.dcm", np.stack([RAMP_12BIT] * 2),
                                                    NumberOfFrames=2), "holds 2 frames"),
    case("16-bit RGB PNG", lambda t: png16(t / "rgb16.png", RGB16, 2), "16 bits per channel"),
    case("DICOM without an image", lambda t: write_dicom(t / "sr.dcm", None), "no Rows/Columns"),
])
def test_image_size_refuses_what_read_image_refuses_from_the_header(tmp_path, build, message):
    path = build(tmp_path)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)
    with pytest.raises(ImageReadError, match=message):
        image_size(path)


def test_undecodable_dicom_gives_one_message_not_tracebacks(tmp_path, caplog):
    path = write_dicom(tmp_path / "j2k.dcm", RAMP_12BIT)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 100])  # a broken codestream
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError, match=r"j2k\.dcm"):
        read_image(path)
    assert not [record for record in caplog.records if record.exc_info]
