"""`python -m ffpipe.bench.decoders` on the CPU: the libraries' decoders and GpuDecoder's own path
(the sliced crops) measured on ImageNet-like JPEGs, alone and beside a busy device."""
import pytest

from ffpipe.bench import decoders


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's decoders, deprecated in 0.29
def test_every_library_part_thread_count_stream_and_load_gets_a_row(capsys):
    rows = decoders.main(["--images", "8", "--batch-size", "4", "--image-size", "32", "--threads", "1", "2",
                          "--load", "none", "default", "--stream", "current", "high", "--seconds", "0.2",
                          "--device", "cpu"])
    libraries = {r["library"] for r in rows}
    assert "torchvision" in libraries
    per_library = [(r["part"], r["threads"], r["stream"], r["load"]) for r in rows if r["library"] == "torchvision"]
    assert per_library == [(part, t, stream, load) for load in ("none", "default") for part in ("decode", "GpuDecoder")
                           for t in (1, 2) for stream in ("current", "high")]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "| torchvision | GpuDecoder | 2 | high | default |" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_queued_work_gets_a_timed_call_per_library_part_and_queue(capsys):
    rows = decoders.main(["--images", "4", "--batch-size", "4", "--image-size", "32", "--threads", "1",
                          "--seconds", "0.1", "--queued", "0", "50", "--device", "cpu"])
    waited = [(r["library"], r["part"], r["queued_ms"]) for r in rows if "queued_ms" in r]
    libraries = sorted({r["library"] for r in rows if r["library"] != "torch"},
                       key=[r["library"] for r in rows].index)
    assert waited == [(lib, part, q) for lib in libraries for part in ("decode", "GpuDecoder") for q in (0, 50)] \
        + [("torch", part, q) for part in ("a small kernel", "pinned copy") for q in (0, 50)]
    # on a CPU nothing is queued: no call waits and no queue is left running
    assert all(r["call_ms"] > 0 and r["queue_left"] is False for r in rows if "queued_ms" in r)
    assert "| torchvision | GpuDecoder | 50 |" in capsys.readouterr().out
