"""`python -m ffpipe.bench.head_kernels` on the CPU: the plain path timed per shape (the kernels
need a GPU: their column is empty), and each row says whether the size gate fuses that map."""
from ffpipe.bench import head_kernels


def test_the_bench_times_the_plain_path_per_shape_on_the_cpu(capsys):
    rows = head_kernels.main(["--device", "cpu", "--shapes", "4,16,16,16", "2,8,8,8", "--reps", "2"])
    assert [r["shape"] for r in rows] == [(4, 16, 16, 16), (2, 8, 8, 8)]
    assert all(r["kernels_ms"] is None and r["plain_ms"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert "| 4 x 16 x 16 x 16 | 4,096 | - |" in table and table.count("| no |") == 2
