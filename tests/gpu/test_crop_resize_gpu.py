"""The stream's crop-and-resize kernel compiled on a GPU against the crops sliced and resized one
batch at a time by resize.py (itself tested against torch's interpolate): ImageNet-size images,
a crop larger than resize.LARGEST, enlarged crops, mirrors."""
import numpy as np
import pytest
import torch

from ffpipe.data.stream import resize
from ffpipe.data.stream.crops import batch_draws, eval_box, train_box
from ffpipe.kernels import crop_resize

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("train", [True, False])
def test_the_kernel_equals_the_sliced_path(train):
    g = torch.Generator().manual_seed(0)
    sides = [(375, 500), (500, 333), (1200, 900), (60, 80)] + [(int(h), 500) for h in range(330, 376, 3)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).cuda() for h, w in sides]
    draws = batch_draws(0, 0, 0, len(images))
    boxes = [train_box(h, w, draws[i]) if train else eval_box(h, w) for i, (h, w) in enumerate(sides)]
    boxes[3] = (10, 20, 30, 40)  # enlarged to 224
    mirror = draws[:, -1] < 0.5
    got = crop_resize.crop_resize(images, np.array(boxes), mirror, 224)
    crops = [img[:, t:t + h, l:l + w] for img, (t, l, h, w) in zip(images, boxes)]
    want = resize.resize_crops(crops, 224)
    want = torch.where(torch.from_numpy(mirror).cuda()[:, None, None, None], want.flip(3), want)
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)  # of 0-255 values: fp32 sums in another order (17 x 17 taps)
