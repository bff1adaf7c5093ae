"""The goodness head's tail (kernels/goodness_loss.py) compiled on a GPU: goodness, the margin loss,
the hit count and the activations' gradient against ff/goodness.py's operations, bf16, 1,000
classes padded to 1,008 as the head pads them, and a unit's step taking it."""
import pytest
import torch

from ffpipe.config import AlgoConfig
from ffpipe.ff.goodness import GoodnessHead
from ffpipe.ff.unit import LocalUnit
from ffpipe.kernels import goodness_loss
from ffpipe.models.resnet import resnet_units
from tests.helpers.interpreted import head_tail

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("shape, classes, margin, temperature", [((256, 1008, 4, 4), 1000, 1.0, 1.0),
                                                                  ((512, 16, 4, 4), 10, 1.0, 1.0),
                                                                  ((64, 1008, 2, 2), 1000, 0.5, 2.0)])
def test_the_kernels_give_torchs_goodness_loss_and_gradient(shape, classes, margin, temperature):
    got = head_tail(True, shape, classes, torch.bfloat16, margin, temperature, CUDA)
    want = head_tail(False, shape, classes, torch.bfloat16, margin, temperature, CUDA)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[2] == want[2]
    # torch rounds the per-class scale to bf16 before the product, the kernel only the product
    torch.testing.assert_close(got[3].float(), want[3].float(), atol=1e-6, rtol=2e-2)
    assert not got[3][:, classes:].any()


def test_a_units_step_takes_the_kernels_and_gives_torchs_loss(monkeypatch):
    unit = LocalUnit(1, resnet_units("resnet50", (3, 224, 224), "block")[1], GoodnessHead(256, 1000, pool=4),
                     AlgoConfig()).to(CUDA, memory_format=torch.channels_last)
    x = torch.randn(32, 64, 56, 56, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (32,), device=CUDA)
    losses = []
    for fused in (True, False):
        monkeypatch.setattr(goodness_loss, "fuses", lambda a, kind, _f=fused: _f)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = unit(x, (), y)
        losses.append((out.loss.detach(), out.correct))
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=1e-5, rtol=1e-5)
    assert losses[0][1] == losses[1][1]
