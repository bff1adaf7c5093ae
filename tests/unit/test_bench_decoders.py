"""`python -m ffpipe.bench.decoders` on the CPU: the libraries' decoders and GpuDecoder's own path
(the sliced crops) measured on ImageNet-like JPEGs, alone and beside a busy device."""
import pytest

from ffpipe.bench import decoders


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's decoders, deprecated in 0.29
def test_every_library_part_thread_count_and_load_gets_a_row(capsys):
    rows = decoders.main(["--images", "8", "--batch-size", "4", "--image-size", "32", "--threads", "1", "2",
                          "--load", "none", "default", "--seconds", "0.2", "--device", "cpu"])
    libraries = {r["library"] for r in rows}
    assert "torchvision" in libraries
    per_library = [(r["part"], r["threads"], r["load"]) for r in rows if r["library"] == "torchvision"]
    assert per_library == [(part, t, load) for load in ("none", "default") for part in ("decode", "GpuDecoder")
                           for t in (1, 2)]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "| torchvision | GpuDecoder | 2 | default |" in capsys.readouterr().out
