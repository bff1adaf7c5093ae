"""The GPU decoder's batched resize (data/stream/resize.py) against torch's antialiased
interpolate, crop by crop: the same filter, so the same values up to summation order."""
import pytest
import torch
import torch.nn.functional as F

from ffpipe.data.stream import resize

SIDES = [(375, 500), (100, 80), (700, 900), (224, 224), (30, 41), (500, 333), (225, 223), (1, 5)]


def _interpolated(crop: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_batch_of_crops_resizes_as_each_would_alone(monkeypatch, dtype):
    """Shrunk, enlarged and kept sizes in one batch, cut into chunks of 3, and a crop past
    LARGEST (700 x 900) resized on its own, inside the first chunk's rows."""
    monkeypatch.setattr(resize, "CHUNK", 3)
    g = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(dtype) for h, w in SIDES]
    out = resize.resize_crops(crops, 224)
    assert out.shape == (len(SIDES), 3, 224, 224) and out.dtype == torch.float32
    for crop, got in zip(crops, out):
        assert (got - _interpolated(crop, 224)).abs().max() <= 1e-3  # of 0-255 values


def test_crop_views_of_larger_images_are_resized_from_the_crop_only():
    """The decoder hands over views (img[:, top:, left:]); the pixels outside them never count."""
    image = torch.zeros(3, 300, 400)
    image[:, 100:200, 150:300] = 200.0
    crops = [image[:, 100:200, 150:300], image[:, 0:50, 0:60]]
    out = resize.resize_crops(crops, 32)
    assert torch.allclose(out[0], torch.full_like(out[0], 200.0)) and out[1].abs().max() == 0


def test_filter_weights_sum_to_one_over_each_crop_and_vanish_past_it():
    w = resize.filter_weights(torch.tensor([500, 100, 7]), 224, 512)
    assert torch.allclose(w.sum(-1), torch.ones(3, 224))
    assert w[1, :, 100:].abs().max() == 0 and w[2, :, 7:].abs().max() == 0
