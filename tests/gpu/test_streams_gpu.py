"""pipeline/streams.py: a blocking stream's work is ordered before the default stream's later
work without an explicit wait (the legacy default stream's rule), where a torch (non-blocking)
stream's is not."""
import pytest
import torch

from ffpipe.pipeline.streams import blocking_stream

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
SPIN = 200_000_000  # GPU cycles the stream spins first (~0.1 s): far longer than the read after it


def _read_after(stream) -> float:
    x = torch.zeros(1, device=CUDA)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SPIN)
        x.fill_(1.0)
    seen = (x * 1).item()  # on the default stream, with no wait on `stream`
    torch.cuda.synchronize()
    return seen


def test_the_default_stream_waits_for_a_blocking_stream_but_not_for_a_torch_stream():
    assert _read_after(blocking_stream(CUDA)) == 1.0
    assert _read_after(torch.cuda.Stream(CUDA)) == 0.0  # the contrast: the test can tell them apart
