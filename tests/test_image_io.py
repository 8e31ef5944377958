"""utils.image_io: bit depths, DICOM modality/VOI/photometric handling, the pixel limit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from utils.image_io import WINDOWS, ImageReadError, image_size, read_image, to_uint8

RAMP_12BIT = (np.arange(40 * 30).reshape(30, 40) * 4095 // (40 * 30 - 1)).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
                bits: int = 12, **elements) -> Path:
    """A minimal single-frame DICOM with the given pixels (None: no pixel module), their
    stored bits and the given elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def gray(image: np.ndarray) -> np.ndarray:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    return image[..., 0]


def test_8bit_grayscale_is_read_unchanged(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert (gray(read_image(tmp_path / "a.png")) == pixels).all()


def test_16bit_png_uses_the_full_range_not_clipping(tmp_path):
    Image.fromarray(RAMP_12BIT).save(tmp_path / "a.png")
    out = gray(read_image(tmp_path / "a.png"))
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01  # clipping to 8 bits made 93.8 % of such pixels 255
    assert (np.diff(out.astype(int).ravel()) >= 0).all()  # monotone ramp stays monotone


def test_percentile_window_saturates_only_the_tails(tmp_path):
    pixels = RAMP_12BIT.copy()
    pixels[0, 0] = 65535  # one hot pixel would flatten the full-range mapping
    Image.fromarray(pixels).save(tmp_path / "a.png")
    full = gray(read_image(tmp_path / "a.png", window="full"))
    windowed = gray(read_image(tmp_path / "a.png", window="percentile"))
    assert full[1:].max() < 20
    assert windowed.max() == 255 and (windowed == 255).mean() < 0.01


def test_float_tiff_and_nan_pixels(tmp_path):
    values = np.linspace(-1.0, 3.0, 20 * 10, dtype=np.float32).reshape(10, 20)
    Image.fromarray(values).save(tmp_path / "f.tiff")
    out = gray(read_image(tmp_path / "f.tiff"))
    assert out[0, 0] == 0 and out[-1, -1] == 255
    values[3, 3] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tiff")
    with pytest.raises(ImageReadError, match=r"nan\.tiff.*non-finite"):
        read_image(tmp_path / "nan.tiff")


def test_rgba_drops_alpha(tmp_path):
    pixels = np.zeros((4, 5, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 10
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_and_window(tmp_path, photometric):
    # stored 0..4095, rescaled to -1024..3071 HU-like values, window 0 +- 500
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, photometric, RescaleSlope=1,
                       RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1001)
    out = gray(read_image(path)).astype(int)
    values = RAMP_12BIT.astype(int) - 1024
    expected = np.clip((values - (0 - 0.5)) / 1000 + 0.5, 0, 1) * 255
    expected = np.rint(expected).astype(int)
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    assert np.abs(out - expected).max() <= 1
    assert image_size(path) == (40, 30)


def test_dicom_without_window_uses_the_window_argument(tmp_path):
    path = write_dicom(tmp_path / "no_suffix", RAMP_12BIT, RescaleSlope=2, RescaleIntercept=5)
    out = gray(read_image(path))  # recognised by the DICM magic bytes
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01


def test_dicom_voi_lut_sequence(tmp_path):
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    table = np.minimum(65535, np.arange(4096) * 32)  # saturates above stored value 2048
    lut.add_new(0x00283006, "US", table.tolist())  # LUTData
    path = write_dicom(tmp_path / "a.dcm", RAMP_12BIT, VOILUTSequence=pydicom.Sequence([lut]))
    out = gray(read_image(path)).astype(int)
    expected = np.rint(table[RAMP_12BIT] / 65535 * 255).astype(int)
    assert np.abs(out - expected).max() <= 1 and (out == 255).mean() > 0.4


@pytest.mark.parametrize("reader", [read_image, image_size])
def test_pixel_limit_refuses_bombs(tmp_path, reader):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.png.*--max_image_pixels"):
        reader(tmp_path / "big.png", max_pixels=9_999)
    # PIL's own DecompressionBombWarning (> limit) and Error (> 2 x limit) are both refused
    with pytest.raises(ImageReadError, match="big.png") as raised:
        reader(tmp_path / "big.png", max_pixels=4_000)
    assert "4,000 pixels" in str(raised.value) and "8000" not in str(raised.value)
    dicom = write_dicom(tmp_path / "big.dcm", RAMP_12BIT)
    with pytest.raises(ImageReadError, match=r"big\.dcm.*1,200 pixels"):
        reader(dicom, max_pixels=1_000)


@pytest.mark.parametrize("reader", [read_image, image_size])
@pytest.mark.parametrize("size, refused", [((4000, 3), True), ((3, 400), True), ((210, 10), True),
                                           ((200, 10), False), ((1, 1), False)])
def test_aspect_ratio_limit(tmp_path, reader, size, refused):
    Image.new("L", size).save(tmp_path / "thin.png")
    if refused:
        with pytest.raises(ImageReadError, match=r"thin\.png is \d+x\d+ pixels, an aspect ratio"):
            reader(tmp_path / "thin.png")
    else:
        reader(tmp_path / "thin.png")


@pytest.mark.parametrize("reader", [read_image, image_size])
@pytest.mark.parametrize("suffix", [".tif", ".gif"])
def test_multi_frame_images_are_refused(tmp_path, reader, suffix):
    frames = [Image.new("L", (32, 32), value) for value in (0, 255)]
    frames[0].save(tmp_path / f"two{suffix}", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=rf"two\{suffix} holds 2 frames"):
        reader(tmp_path / f"two{suffix}")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "cannot be read"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot be read"),
    (b"\0" * 128 + b"DICM" + b"\1" * 20, "DICOM .* cannot be read"),
])
def test_unreadable_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_truncated_png_is_an_error(tmp_path):
    Image.fromarray(RAMP_12BIT.astype(np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_to_uint8_rejects_unknown_window():
    assert WINDOWS == ("full", "percentile")
    with pytest.raises(ValueError, match="window 'auto'"):
        to_uint8(np.zeros((2, 2)), "auto")
    assert (to_uint8(np.full((2, 2), 7.0)) == 0).all()
