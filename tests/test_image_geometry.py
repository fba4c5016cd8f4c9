"""volseg.image.Image geometry: index <-> world (LPS and RAS), known values, grid checks."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from volseg.errors import GeometryError, InputError
from volseg.image import Image
from volseg.io import read_image

RNG = np.random.default_rng(1)


def oblique(ndim: int) -> Image:
    rot = Rotation.from_euler("zyx", [25, -15, 40], degrees=True).as_matrix() if ndim == 3 else \
        np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    return Image(np.zeros((4,) * ndim + (1,)), spacing=(0.5, 1.5, 3.0)[:ndim], origin=(-7.0, 2.0, 11.0)[:ndim],
                 direction=rot)


@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip_world_index(ndim):
    img = oblique(ndim)
    world = RNG.normal(scale=50, size=(20, ndim))
    for ras in (False, True):
        np.testing.assert_allclose(img.index_to_world(img.world_to_index(world, ras=ras), ras=ras), world, atol=1e-9)
    idx = RNG.uniform(0, 4, size=(20, ndim))
    np.testing.assert_allclose(img.world_to_index(img.index_to_world(idx)), idx, atol=1e-9)
    # the (d+1)x(d+1) affine says the same thing
    hom = np.c_[idx, np.ones(len(idx))]
    np.testing.assert_allclose((img.affine @ hom.T).T[:, :ndim], img.index_to_world(idx))


def test_known_values():
    img = Image(np.zeros((3, 3, 3, 1)), spacing=(2, 3, 4), origin=(10, 20, 30))
    np.testing.assert_allclose(img.index_to_world([1, 1, 1]), [[12, 23, 34]])
    np.testing.assert_allclose(img.world_to_index([14, 29, 42]), [[2, 3, 3]])
    # axis 0 points along world +y, axis 1 along world -x
    rot = Image(np.zeros((3, 3, 3, 1)), spacing=(2, 3, 4), origin=(10, 20, 30),
                direction=[[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(rot.index_to_world([[1, 0, 0], [0, 1, 0]]), [[10, 22, 30], [7, 20, 30]])
    np.testing.assert_allclose(rot.index_to_world([1, 1, 1], ras=True), [[-7, -22, 34]])
    # a raster is its own world
    raster = Image.from_array(np.zeros((5, 6)))
    np.testing.assert_allclose(raster.index_to_world([[2, 3]]), [[2, 3]])


def test_nifti_ras_vs_lps(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xz", [12, -35], degrees=True).as_matrix() * [0.8, 1.1, 2.4]
    affine[:3, 3] = (-90, 120, -60)
    nii = nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), affine)
    nii.set_qform(affine, code=1)
    nib.save(nii, tmp_path / "v.nii.gz")
    img = read_image(tmp_path / "v.nii.gz")
    ijk = np.array([[0, 0, 0], [5, 6, 7], [2, 3, 1]])
    ras = nib.affines.apply_affine(nib.load(tmp_path / "v.nii.gz").affine, ijk)
    np.testing.assert_allclose(img.index_to_world(ijk, ras=True), ras, atol=1e-4)
    np.testing.assert_allclose(img.index_to_world(ijk), ras * [-1, -1, 1], atol=1e-4)  # LPS: x, y negated
    np.testing.assert_allclose(img.world_to_index(ras, ras=True), ijk, atol=1e-4)
    # ITK reads the same file into the same LPS world
    ref = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    for n in ijk:
        np.testing.assert_allclose(img.index_to_world(n)[0], ref.TransformIndexToPhysicalPoint(n.tolist()), atol=1e-4)


def test_shapes_and_constructors():
    img = Image.from_array(np.zeros((3, 5, 4)), channel_axis=0)
    assert (img.ndim, img.shape, img.channels) == (2, (5, 4), 3)
    vol = Image.from_array(np.zeros((4, 5, 6)))
    assert (vol.ndim, vol.shape, vol.channels) == (3, (4, 5, 6), 1)
    assert vol.with_array(np.ones((4, 5, 6))).shape == (4, 5, 6)
    with pytest.raises(GeometryError):
        vol.with_array(np.ones((4, 5, 5)))
    with pytest.raises(GeometryError, match="spacing"):
        Image(np.zeros((2, 2, 1)), spacing=(1, 0))
    with pytest.raises(GeometryError):
        Image(np.zeros((2, 2, 1)), spacing=(1, 1, 1))
    with pytest.raises(InputError):
        Image(np.zeros(3))


def test_check_same_grid_names_the_difference():
    a = oblique(3)
    a.check_same_grid(oblique(3))
    assert a.same_grid(oblique(3))
    b = Image(np.zeros((4, 4, 4, 1)), spacing=(0.5, 1.5, 6.0), origin=a.origin, direction=a.direction)
    with pytest.raises(GeometryError, match="spacing"):
        a.check_same_grid(b)
    c = Image(np.zeros((4, 4, 4, 1)), spacing=a.spacing, origin=(0, 0, 0), direction=a.direction)
    with pytest.raises(GeometryError, match="origin"):
        a.check_same_grid(c, what="label map")
    d = Image(np.zeros((4, 4, 4, 1)), spacing=a.spacing, origin=a.origin)
    with pytest.raises(GeometryError, match="direction"):
        a.check_same_grid(d)
    with pytest.raises(GeometryError, match="shape"):
        a.check_same_grid(Image(np.zeros((4, 4, 5, 1))))


def test_check_finite():
    Image.from_array(np.zeros((3, 3), np.uint8)).check_finite()
    a = np.zeros((3, 3), np.float32)
    a[2, 1] = np.inf
    with pytest.raises(InputError, match=r"1 NaN/Inf.*\[2, 1\]"):
        Image.from_array(a).check_finite()
