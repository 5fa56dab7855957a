"""The fused pre-processing against the plain formula: the same floats, bit for bit, with the
padding zero even though the buffer starts uninitialised."""

from __future__ import annotations

import numpy as np
import pytest

from facestream.detector.model.loader import RETINAFACE_NORM, SCRFD_NORM
from facestream.detector.model.preprocess import Normalisation, to_tensor


def plain(im: np.ndarray, norm: Normalisation, shape: tuple[int, int]) -> np.ndarray:
    px = im[:, :, ::-1] if norm.bgr else im
    chw = (px.astype(np.float32) - np.float32(norm.mean)) / np.float32(norm.std)
    out = np.zeros((3, *shape), np.float32)
    out[:, : im.shape[0], : im.shape[1]] = chw.transpose(2, 0, 1)
    return out


@pytest.mark.parametrize("norm", [RETINAFACE_NORM, SCRFD_NORM], ids=["bgr-caffe", "rgb-std"])
@pytest.mark.parametrize("size", [(480, 640), (427, 601), (64, 32)])
def test_to_tensor_matches_the_plain_formula(norm: Normalisation, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)]
    shape = norm.padded(*size)
    # Dirty the allocator first, so padding left unwritten would likely show as NaN.
    dirty = np.full((2, 3, *shape), np.nan, np.float32)
    del dirty
    got = to_tensor(images, norm, shape)
    for i, im in enumerate(images):
        want = plain(im, norm, shape)
        # (x - mean) * (1 / std) against (x - mean) / std: within one float32 rounding.
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=0)
        if norm.std == (1.0, 1.0, 1.0):
            assert np.array_equal(got[i], want)
