"""The CUDA path (torch products on the GPU) against the CPU: run where a GPU is present, skipped elsewhere.

The CPU evaluates through the fused extension (or torch where it is absent); CUDA always through
torch.  Both must give the same posterior, mask, uncertainty and suggestion on the same clicks.
"""
import numpy as np
import pytest
import torch
from test_session import blob_image

from volseg import Image, Session
from volseg.gp.evaluate import evaluate_boxes
from volseg.robot import ritm_click

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scripted(device, img, truth, clicks=None, **settings):
    s = Session(device=device, **settings).set_image(Image.from_array(img))
    if clicks is None:  # the robot's clicks on this device
        clicks = []
        for _ in range(6):
            c = ritm_click(truth, s.mask() == 1)
            if c is None:  # nothing left to correct
                break
            s.add_click(c.voxel(), c.positive)
            clicks.append((c.voxel(), c.positive))
    else:
        for pos, positive in clicks:
            s.add_click(pos, positive)
    return s, clicks


@pytest.mark.parametrize("shape", [(96, 128), (40, 48, 36)])
def test_cuda_session_matches_cpu(shape):
    img, labels = blob_image(shape)
    truth = labels == 1
    cpu, clicks = scripted("cpu", img, truth)
    gpu, _ = scripted("cuda", img, truth, clicks)
    assert gpu.device.type == "cuda" and gpu._mean.is_cuda
    # float32 sums in another order
    np.testing.assert_allclose(gpu._mean.cpu().numpy(), cpu._mean.cpu().numpy(), atol=1e-3)
    np.testing.assert_allclose(gpu.uncertainty(), cpu.uncertainty(), atol=1e-3)
    agree = (gpu.mask() == cpu.mask()).mean()
    assert agree > 0.999
    for pos, positive in dict(clicks).items():  # every clicked label kept on the GPU (a voxel's last click counts)
        assert (gpu.mask()[pos] == 1) == positive
    assert gpu.suggest_click().position == cpu.suggest_click().position


def test_cuda_local_updates_match_a_full_evaluation():
    img, labels = blob_image((36, 40, 32), seed=3)
    s, _ = scripted("cuda", img, labels == 1, spatial_lengthscale=6.0)
    local_mean, local_var = s._mean.clone(), s._variance().clone()
    s._evaluate_all()
    torch.testing.assert_close(local_mean, s._mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(local_var, s._variance(), atol=1e-4, rtol=0)


def test_cuda_chunking_gives_the_same_maps():
    img, labels = blob_image((32, 40, 24), seed=1)
    s, _ = scripted("cuda", img, labels == 1)
    box = [tuple(slice(0, n) for n in img.shape)]
    out = []
    for max_bytes in (1 << 30, 1 << 16):  # one chunk, then many
        mean = torch.empty_like(s._mean)
        var = torch.empty_like(s._var)
        evaluate_boxes(s.posterior, s.inputs, lambda b: s._prior_mean(b), box, mean, var, max_bytes=max_bytes)
        out.append((mean, var))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=0)


def test_cuda_pathwise_samples_follow_the_posterior():
    img, labels = blob_image((48, 64), seed=2)
    s, _ = scripted("cuda", img, labels == 1)
    f = s.samples(n=256, n_basis=2048, seed=0)
    assert f.shape == (256, 48, 64) and np.isfinite(f).all()
    mean = s._mean[0].cpu().numpy()
    std = s.uncertainty()
    # the sample mean lies within a few standard errors of the posterior mean
    z = np.abs(f.mean(0) - mean) / (std / np.sqrt(256) + 1e-3)
    assert np.median(z) < 2.0
    np.testing.assert_allclose(np.median(f.std(0) / np.maximum(std, 1e-3)), 1.0, atol=0.15)
