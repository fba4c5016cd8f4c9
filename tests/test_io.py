"""volseg.io and volseg.provenance on small generated files: round trips, geometry, errors, atomicity."""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from scipy.spatial.transform import Rotation

from volseg import provenance
from volseg.errors import GeometryError, InputError, OutputError, OutputExistsError
from volseg.image import Image
from volseg.io import read_image, read_mask, write_mask, write_probability
from volseg.io.raster import davis_palette

RNG = np.random.default_rng(0)
ROT = Rotation.from_euler("zx", [30, 10], degrees=True).as_matrix()  # oblique, det +1
SPACING = (0.7, 0.9, 2.5)
ORIGIN_RAS = (10.0, -20.0, 30.0)


# -- generated inputs ------------------------------------------------------------------------
def make_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> tuple:
    data = RNG.integers(-100, 1000, (7, 6, 5)).astype(np.int16) if data is None else data
    if affine is None:
        affine = np.eye(4)
        affine[:3, :3] = ROT * np.asarray(SPACING)
        affine[:3, 3] = ORIGIN_RAS
    im = nib.Nifti1Image(data, affine)
    im.set_qform(affine, code=1)
    im.set_sform(affine, code=2)  # different codes: a mask must keep both
    nib.save(im, path)
    return path, data, nib.load(path).affine


def make_sitk(shape_xyz=(6, 5, 4), dtype=np.int16) -> tuple[sitk.Image, np.ndarray]:
    """A SimpleITK image with oblique geometry, plus its array in ITK index order (x, y, z)."""
    arr = RNG.integers(-1000, 2000, shape_xyz).astype(dtype)
    img = sitk.GetImageFromArray(arr.transpose())
    d = len(shape_xyz)
    img.SetSpacing((0.8, 0.6, 2.0)[:d])
    img.SetOrigin((-5.0, 12.0, 40.0)[:d])
    rot = Rotation.from_euler("y", 20, degrees=True).as_matrix() if d == 3 else np.array([[0.0, -1.0], [1.0, 0.0]])
    img.SetDirection(rot.ravel().tolist())
    return img, arr


def make_dicom_series(folder: Path, uid: str = "1.2.826.0.1.3680043.2.1125.1", depth: int = 4) -> tuple:
    """int16 slices with position/orientation tags, as in SimpleITK's DicomSeriesFromArray example."""
    folder.mkdir(parents=True, exist_ok=True)
    img, arr = make_sitk((6, 5, depth))
    d = img.GetDirection()
    tags = [("0008|0031", time.strftime("%H%M%S")), ("0008|0021", time.strftime("%Y%m%d")),
            ("0008|0008", "DERIVED\\SECONDARY"), ("0020|000e", uid), ("0008|0060", "CT"),
            ("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))),
            ("0018|0050", str(img.GetSpacing()[2]))]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(depth):
        s = img[:, :, i]
        for tag, value in tags:
            s.SetMetaData(tag, value)
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        s.SetMetaData("0020|0013", str(i))
        writer.SetFileName(str(folder / f"{uid[-1]}_{depth - i:02d}.dcm"))  # names in reverse z order
        writer.Execute(s)
    return img, arr


def sitk_geometry(img: sitk.Image) -> tuple:
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def assert_geometry_close(a: tuple, b: tuple, atol: float = 1e-4) -> None:
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_allclose(x, y, atol=atol)


def assert_matches_sitk(img: Image, ref: sitk.Image, atol: float = 1e-4) -> None:
    assert img.shape == ref.GetSize()
    np.testing.assert_allclose(img.spacing, ref.GetSpacing(), atol=atol)
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=atol)
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=atol)


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -- NIfTI -----------------------------------------------------------------------------------
def test_nifti_round_trip_oblique_anisotropic(tmp_path):
    path, data, affine = make_nifti(tmp_path / "ct.nii.gz")
    img = read_image(path)
    assert img.shape == data.shape and img.channels == 1 and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array[..., 0], data)
    np.testing.assert_allclose(img.spacing, SPACING, rtol=1e-6)
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(img.direction, flip @ ROT, atol=1e-6)
    np.testing.assert_allclose(img.origin, flip @ ORIGIN_RAS, atol=1e-5)
    assert img.meta["dtype"] == "int16" and img.meta["format"] == "nifti" and img.meta["path"] == str(path)
    assert_matches_sitk(img, sitk.ReadImage(str(path)))  # our RAS -> LPS agrees with ITK's


def test_nifti_scaling_4d_channels_and_2d(tmp_path):
    im = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2.0, 3.0, 4.0, 1.0]))
    im.header.set_slope_inter(0.5, 10)
    nib.save(im, tmp_path / "s.nii")
    np.testing.assert_allclose(read_image(tmp_path / "s.nii").array[..., 0], np.arange(24).reshape(2, 3, 4) * 0.5 + 10)

    data4 = RNG.random((4, 5, 3, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data4, np.eye(4)), tmp_path / "c.nii.gz")
    img4 = read_image(tmp_path / "c.nii.gz")
    assert img4.shape == (4, 5, 3) and img4.channels == 2
    np.testing.assert_array_equal(img4.array, data4)
    out = write_mask(np.ones(img4.shape, np.uint8), img4, tmp_path / "c_mask.nii.gz")
    assert nib.load(out).shape == (4, 5, 3)  # the channel axis is not carried over from the header

    data2 = RNG.random((6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(data2, np.diag([0.5, 0.25, 1.0, 1.0])), tmp_path / "flat.nii.gz")
    img2 = read_image(tmp_path / "flat.nii.gz")
    assert img2.ndim == 2 and img2.spacing == (0.5, 0.25)
    np.testing.assert_array_equal(img2.array[..., 0], data2)
    p = write_mask((data2 > 0.5).astype(np.uint8), img2, tmp_path / "flat_mask.nii.gz")
    np.testing.assert_array_equal(read_mask(p, like=img2), data2 > 0.5)


def test_nan_is_read_and_reported_by_check_finite(tmp_path):
    data = np.ones((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    img = read_image(tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match=r"1 NaN/Inf.*\[1, 2, 3\]"):
        img.check_finite()


def test_complex_and_non_numeric_images_are_refused_not_truncated(tmp_path):
    """A complex NIfTI (an MR reconstruction, say) read as float32 would lose its imaginary part without a
    word; volseg names the type and asks for the magnitude.  The same holds for arrays given to a Session."""
    from volseg import Session

    vol = (np.ones((6, 5, 4)) * (1 + 2j)).astype(np.complex64)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.raises(InputError, match="stores complex64 values.*magnitude"):
        read_image(tmp_path / "c.nii.gz")
    for bad in (vol, np.full((6, 5), "a")):
        with pytest.raises(InputError, match="real intensities"):
            Session().set_image(bad)
    Session().set_image(np.zeros((6, 5), bool))  # a binary image is a real one


def test_mask_like_nifti_keeps_header_affine_and_codes(tmp_path):
    path, data, affine = make_nifti(tmp_path / "ct.nii.gz")
    img = read_image(path)
    mask = (data > 400).astype(np.uint8) + (data > 800)
    out = write_mask(mask, img, tmp_path / "mask.nii.gz")
    m, src = nib.load(out), nib.load(path)
    assert np.array_equal(m.affine, src.affine)
    assert np.array_equal(m.header.get_qform(), src.header.get_qform())
    assert np.array_equal(m.header.get_sform(), src.header.get_sform())
    assert (int(m.header["qform_code"]), int(m.header["sform_code"])) == (1, 2)
    assert m.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(m.dataobj), mask)  # no intensity scaling leaks into labels
    assert_geometry_close(sitk_geometry(sitk.ReadImage(str(out))), sitk_geometry(sitk.ReadImage(str(path))))


# -- NRRD / MHA / MHD ------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_round_trip(tmp_path, suffix):
    ref, arr = make_sitk()
    sitk.WriteImage(ref, str(tmp_path / f"vol{suffix}"))
    img = read_image(tmp_path / f"vol{suffix}")
    np.testing.assert_array_equal(img.array[..., 0], arr)  # (x, y, z) = ITK index order
    assert_matches_sitk(img, ref, atol=1e-9)
    assert img.meta["dtype"] == "int16" and img.meta["format"] == "itk"
    idx = (4, 1, 3)
    np.testing.assert_allclose(img.index_to_world(idx)[0], ref.TransformIndexToPhysicalPoint(idx))


def test_2d_nrrd_and_multichannel_mha(tmp_path):
    ref, arr = make_sitk((7, 5))
    sitk.WriteImage(ref, str(tmp_path / "flat.nrrd"))
    img = read_image(tmp_path / "flat.nrrd")
    assert img.ndim == 2
    np.testing.assert_array_equal(img.array[..., 0], arr)
    assert_matches_sitk(img, ref)

    vec = RNG.random((4, 3, 2, 3)).astype(np.float32)  # (z, y, x, components)
    sitk.WriteImage(sitk.GetImageFromArray(vec, isVector=True), str(tmp_path / "vec.mha"))
    img = read_image(tmp_path / "vec.mha")
    assert img.shape == (2, 3, 4) and img.channels == 3
    np.testing.assert_array_equal(img.array, vec.transpose(2, 1, 0, 3))


@pytest.mark.parametrize("like_suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("out_suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".nii"])
def test_mask_like_itk_image_has_same_geometry(tmp_path, like_suffix, out_suffix):
    ref, arr = make_sitk()
    sitk.WriteImage(ref, str(tmp_path / f"vol{like_suffix}"))
    img = read_image(tmp_path / f"vol{like_suffix}")
    mask = (arr > 500).astype(np.uint8)
    out = write_mask(mask, img, tmp_path / f"mask{out_suffix}")
    back = sitk.ReadImage(str(out))
    assert_geometry_close(sitk_geometry(back), sitk_geometry(ref))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(), mask)
    np.testing.assert_array_equal(read_mask(out, like=img), mask)
    if out_suffix.startswith(".nii"):  # nibabel sees the same world: RAS = LPS with x, y negated
        aff = nib.load(out).affine
        ijk = np.array([[1, 2, 3], [5, 0, 1]])
        np.testing.assert_allclose(nib.affines.apply_affine(aff, ijk), img.index_to_world(ijk, ras=True), atol=1e-4)


def test_mask_labels_above_255_are_uint16(tmp_path):
    ref, arr = make_sitk()
    sitk.WriteImage(ref, str(tmp_path / "vol.nrrd"))
    img = read_image(tmp_path / "vol.nrrd")
    mask = np.zeros(img.shape, np.int64)
    mask[0, 0, 0] = 300
    for suffix in (".nrrd", ".nii.gz", ".npy"):
        out = write_mask(mask, img, tmp_path / f"m{suffix}")
        back = read_mask(out, like=img)
        assert back.dtype == np.uint16 and back[0, 0, 0] == 300


# -- DICOM -----------------------------------------------------------------------------------
def test_dicom_series_geometry_and_order(tmp_path):
    ref, arr = make_dicom_series(tmp_path / "series")
    img = read_image(tmp_path / "series")
    np.testing.assert_array_equal(img.array[..., 0], arr)  # slices sorted by position, not by file name
    assert_matches_sitk(img, ref, atol=1e-4)
    assert img.meta["format"] == "dicom" and img.meta["dicom_files"] == 4 and img.meta["dtype"] == "int16"
    one_file = read_image(next((tmp_path / "series").glob("*.dcm")))  # a file stands for its series
    np.testing.assert_array_equal(one_file.array, img.array)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """A gap would put every slice after it at the wrong place in the world (the volume has one spacing),
    and the mask written in that geometry with it: the steps found are named instead."""
    make_dicom_series(tmp_path / "series", depth=6)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    files[2].unlink()
    with pytest.raises(InputError, match=r"not evenly spaced: steps of [\d.]+, [\d.]+ mm between its 5 slices"):
        read_image(tmp_path / "series")


@pytest.mark.parametrize("out_suffix", [".nrrd", ".nii.gz"])
def test_mask_like_dicom(tmp_path, out_suffix):
    ref, arr = make_dicom_series(tmp_path / "series")
    img = read_image(tmp_path / "series")
    mask = (arr > 0).astype(np.uint8)
    out = write_mask(mask, img, tmp_path / f"mask{out_suffix}")
    assert_geometry_close(sitk_geometry(sitk.ReadImage(str(out))), sitk_geometry(ref))
    np.testing.assert_array_equal(read_mask(out, like=img), mask)
    if out_suffix == ".nii.gz":
        src = nib.load(out)
        assert (int(src.header["qform_code"]), int(src.header["sform_code"])) == (1, 1)
        np.testing.assert_allclose(nib.affines.apply_affine(src.affine, [2, 3, 1]),
                                   img.index_to_world([2, 3, 1], ras=True)[0], atol=1e-4)


def test_dicom_folder_with_two_series_warns_and_takes_the_largest(tmp_path):
    make_dicom_series(tmp_path / "mixed", uid="1.2.826.0.1.3680043.2.1125.2", depth=2)
    _, big = make_dicom_series(tmp_path / "mixed", uid="1.2.826.0.1.3680043.2.1125.3", depth=5)
    with pytest.warns(UserWarning, match="2 DICOM series"):
        img = read_image(tmp_path / "mixed")
    np.testing.assert_array_equal(img.array[..., 0], big)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty")


# -- rasters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_raster_modes(tmp_path, suffix):
    rgb = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    cases = {
        "L": (PILImage.fromarray(grey), grey[..., None]),
        "RGB": (PILImage.fromarray(rgb), rgb),
        # alpha dropped, not composited
        "RGBA": (PILImage.fromarray(np.dstack([rgb, np.full(grey.shape, 7, np.uint8)])), rgb),
        "LA": (PILImage.fromarray(np.dstack([grey, grey // 2])), grey[..., None]),
    }
    for mode, (im, expected) in cases.items():
        path = tmp_path / f"{mode}{suffix}"
        im.save(path)
        img = read_image(path)
        assert img.array.dtype == np.uint8 and img.meta["dtype"] == "uint8", mode
        np.testing.assert_array_equal(img.array, expected, err_msg=mode)
        assert img.spacing == (1.0, 1.0) and img.origin == (0.0, 0.0)
        np.testing.assert_array_equal(img.direction, np.eye(2))


def test_raster_palette_16bit_and_float(tmp_path):
    idx = RNG.integers(0, 4, (5, 6), dtype=np.uint8)
    pal = PILImage.fromarray(idx)
    pal.putpalette(davis_palette().ravel().tolist())
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png").array, davis_palette()[idx])

    deep = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    PILImage.fromarray(deep).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.array.dtype == np.float32 and img.meta["dtype"] == "uint16"
    np.testing.assert_array_equal(img.array[..., 0], deep)

    flt = RNG.random((5, 6)).astype(np.float32)
    PILImage.fromarray(flt).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif").array[..., 0], flt)


def test_multipage_tiff_reads_the_first_page_and_warns(tmp_path):
    pages = [PILImage.fromarray(np.full((4, 5), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.warns(UserWarning, match="3 pages"):
        img = read_image(tmp_path / "stack.tif")
    assert img.shape == (4, 5) and (img.array == 10).all()


def test_jpeg_grey_and_rgb(tmp_path):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[4:12, 6:18] = (200, 40, 90)
    PILImage.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    PILImage.fromarray(rgb[..., 0]).save(tmp_path / "g.jpeg", quality=95)
    c, g = read_image(tmp_path / "c.jpg"), read_image(tmp_path / "g.jpeg")
    assert c.array.shape == (16, 24, 3) and g.array.shape == (16, 24, 1) and c.array.dtype == np.uint8
    assert np.abs(c.array.astype(int) - rgb).mean() < 8  # lossy, but the same picture


def test_png_mask_values_palette_and_probability(tmp_path):
    img = Image.from_array(np.zeros((8, 10), np.uint8), meta={"format": "raster"})
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7], mask[6:, :2] = 1, 2
    out = write_mask(mask, img, tmp_path / "m.png")
    with PILImage.open(out) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), mask)  # labels as they are, not 0/255

    out = write_mask(mask, img, tmp_path / "p.png", palette=True)
    with PILImage.open(out) as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()[3:6]) == (128, 0, 0)  # DAVIS colour of object 1
    np.testing.assert_array_equal(read_mask(out, like=img), mask)  # indices, not colours

    prob = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    with PILImage.open(write_probability(prob, img, tmp_path / "prob.png")) as im:
        np.testing.assert_array_equal(np.asarray(im), np.round(prob * 255).astype(np.uint8))
    np.testing.assert_array_equal(read_image(write_probability(prob, img, tmp_path / "prob.tif")).array[..., 0], prob)


def test_probability_volume(tmp_path):
    path, data, _ = make_nifti(tmp_path / "ct.nii.gz")
    img = read_image(path)
    prob = RNG.random(img.shape).astype(np.float32)
    out = write_probability(prob, img, tmp_path / "prob.nii.gz")
    assert nib.load(out).get_data_dtype() == np.float32
    np.testing.assert_array_equal(read_image(out).array[..., 0], prob)
    np.testing.assert_array_equal(read_image(write_probability(prob, img, tmp_path / "prob.nrrd")).array[..., 0], prob)


# -- errors ----------------------------------------------------------------------------------
def test_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(InputError, match="unsupported image format .xyz"):
        read_image(tmp_path / "a.xyz")
    img = Image.from_array(np.zeros((4, 4)))
    with pytest.raises(InputError, match="unsupported output format .xyz"):
        write_mask(np.zeros((4, 4), np.uint8), img, tmp_path / "out.xyz")
    with pytest.raises(InputError, match="2D maps only"):
        write_mask(np.zeros((4, 4, 4), np.uint8), Image.from_array(np.zeros((4, 4, 4))), tmp_path / "m.png")


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii", "bad.png", "bad.jpg", "bad.tif", "bad.nrrd", "bad.mha"])
def test_garbage_file_is_an_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=f"cannot read image .*{name}"):
        read_image(path)


def test_truncated_files(tmp_path):
    PILImage.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    path, _, _ = make_nifti(tmp_path / "full.nii.gz", data=RNG.random((20, 20, 20)).astype(np.float32))
    sitk.WriteImage(make_sitk((20, 20, 20))[0], str(tmp_path / "full.nrrd"))
    for full in (tmp_path / "full.png", path, tmp_path / "full.nrrd"):
        cut = tmp_path / full.name.replace("full", "cut")
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(InputError, match=f"cannot read image .*{cut.name}"):
            read_image(cut)


def test_empty_array(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((0, 3, 3), np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.nii")


def test_prior_mask_on_another_grid(tmp_path):
    path, data, affine = make_nifti(tmp_path / "ct.nii.gz")
    img = read_image(path)
    nib.save(nib.Nifti1Image(np.zeros((7, 6, 4), np.uint8), affine), tmp_path / "shape.nii.gz")
    with pytest.raises(GeometryError, match=r"shape \(7, 6, 4\).*\(7, 6, 5\)"):
        read_mask(tmp_path / "shape.nii.gz", like=img)
    other = affine.copy()
    other[:3, 2] *= 2  # slice spacing 5 instead of 2.5
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.uint8), other), tmp_path / "spacing.nii.gz")
    with pytest.raises(GeometryError, match="spacing"):
        read_mask(tmp_path / "spacing.nii.gz", like=img)
    np.save(tmp_path / "shape.npy", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(GeometryError, match="shape"):
        read_mask(tmp_path / "shape.npy", like=img)
    with pytest.raises(GeometryError, match="shape"):
        write_mask(np.zeros((7, 6, 4), np.uint8), img, tmp_path / "out.nii.gz")


def test_bad_mask_contents(tmp_path):
    PILImage.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="colour"):
        read_mask(tmp_path / "colour.png")
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), tmp_path / "soft.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_mask(tmp_path / "soft.nii.gz")


def test_existing_output_and_input_are_protected(tmp_path):
    path, data, _ = make_nifti(tmp_path / "ct.nii.gz")
    img = read_image(path)
    mask = np.ones(img.shape, np.uint8)
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_mask(mask, img, out)
    assert out.read_bytes() == b"keep me"
    write_mask(mask, img, out, overwrite=True)
    np.testing.assert_array_equal(read_mask(out), mask)

    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="input"):
        write_mask(mask, img, path, overwrite=True)  # the image's own path is always an input
    with pytest.raises(OutputExistsError, match="input"):
        write_probability(mask.astype(np.float32), img, tmp_path / "mask.nii.gz", overwrite=True, inputs=(out,))
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mhd", ".png", ".npy"])
def test_failing_writer_leaves_nothing(tmp_path, monkeypatch, suffix):
    img = Image.from_array(np.zeros((5, 6)))
    (tmp_path / "out").mkdir()

    def boom(*args, **kwargs):
        for a in args:  # leave a half-written file behind, as a crashing writer would
            if isinstance(a, str):
                Path(a).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    monkeypatch.setattr(sitk, "WriteImage", boom)
    monkeypatch.setattr(PILImage.Image, "save", lambda self, *a, **k: boom(*a, **k))
    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OutputError, match=f"mask{suffix}: disk full"):  # one line naming the output
        write_mask(np.ones((5, 6), np.uint8), img, tmp_path / "out" / f"mask{suffix}")
    assert files_in(tmp_path / "out") == []


# -- provenance ------------------------------------------------------------------------------
def test_file_sha256(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert provenance.file_sha256(tmp_path / "a.bin") == hashlib.sha256(b"abc").hexdigest()
    series = tmp_path / "series"
    (series / "sub").mkdir(parents=True)
    (series / "1.dcm").write_bytes(b"one")
    (series / "sub" / "2.dcm").write_bytes(b"two")
    h = provenance.file_sha256(series)
    assert h == provenance.file_sha256(series) and len(h) == 64
    (series / "1.dcm").write_bytes(b"ONE")
    assert provenance.file_sha256(series) != h
    (series / "1.dcm").write_bytes(b"one")
    (series / "1.dcm").rename(series / "0.dcm")
    assert provenance.file_sha256(series) != h  # names count, not only bytes
    with pytest.raises(InputError):
        provenance.file_sha256(tmp_path / "missing")


def test_versions():
    v = provenance.versions()
    assert set(v) >= {"volseg", "python", "numpy", "torch", "monai", "nibabel", "SimpleITK", "scikit-image", "scipy"}
    assert v["numpy"] == np.__version__ and v["nibabel"] == nib.__version__


def test_sidecar(tmp_path):
    assert provenance.sidecar_path(tmp_path / "out.nii.gz") == tmp_path / "out.json"
    assert provenance.sidecar_path(tmp_path / "a.b.nrrd") == tmp_path / "a.b.json"
    assert provenance.read_sidecar(tmp_path / "out.nii.gz") is None
    record = {"spacing": (0.5, 1.0), "n": np.int64(3), "p": np.float32(0.5), "arr": np.arange(2), "path": tmp_path}
    path = provenance.write_sidecar(tmp_path / "out.nii.gz", record)
    assert path == tmp_path / "out.json"
    assert provenance.read_sidecar(tmp_path / "out.nii.gz") == {
        "spacing": [0.5, 1.0], "n": 3, "p": 0.5, "arr": [0, 1], "path": str(tmp_path)}
    provenance.write_sidecar(tmp_path / "out.nii.gz", {"n": 4})  # a new mask replaces its sidecar
    assert json.loads(path.read_text()) == {"n": 4}
    clicks = tmp_path / "clicks.json"
    clicks.write_text("[]")
    with pytest.raises(OutputExistsError):  # clicks.json as input, clicks.nii.gz as output
        provenance.write_sidecar(tmp_path / "clicks.nii.gz", {"n": 1}, inputs=(clicks,))
    assert clicks.read_text() == "[]"
    assert [f for f in files_in(tmp_path) if f.endswith(".tmp") or ".tmp." in f] == []


def test_reading_and_writing_do_not_warn(tmp_path):
    path, _, _ = make_nifti(tmp_path / "ct.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)
        write_mask(np.zeros((7, 6, 5), np.uint8), read_image(path), tmp_path / "m.nrrd")


# -- real data (opt-in) ----------------------------------------------------------------------
def dev_data() -> Path:
    root = Path(os.environ.get("VOLSEG_DEV_DATA", Path(__file__).resolve().parents[1] / "../shared/data/dev"))
    if not (root / "3d").is_dir():
        pytest.skip(f"dev data not found at {root} (set VOLSEG_DEV_DATA)")
    return root / "3d"


@pytest.mark.devdata
def test_dev_volumes_and_labels_share_grids(tmp_path):
    d = dev_data()
    ct = read_image(d / "dcmqi_ct3slice" / "ct-3slice")
    assert ct.shape == (512, 512, 3)
    for organ, value in (("liver", 1), ("spine", 2), ("heart", 3)):
        label = read_mask(d / "dcmqi_ct3slice" / f"{organ}_seg.nrrd", like=ct)
        assert set(np.unique(label)) == {0, value}
    out = write_mask(label, ct, tmp_path / "heart.nii.gz")  # DICOM in, NIfTI out, same world
    assert_geometry_close(sitk_geometry(sitk.ReadImage(str(out))),
                          sitk_geometry(sitk.ReadImage(str(d / "dcmqi_ct3slice" / "heart_seg.nrrd"))))
    flair = read_image(d / "brats" / "flair.nii.gz")
    assert int(read_mask(d / "brats" / "edema.nii.gz", like=flair).sum()) == 17618
    for case in ("brain1", "brain2", "breast1"):
        img = read_image(d / "pyradiomics" / f"{case}_image.nrrd")
        read_mask(d / "pyradiomics" / f"{case}_label.nrrd", like=img)


def test_outputs_get_the_mode_of_a_new_file(tmp_path):
    import os

    from volseg.io.atomic import atomic_path

    with atomic_path(tmp_path / "x.txt") as tmp:
        open(tmp, "w").write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~mask
