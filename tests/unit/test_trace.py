"""The stage trace's overlap figures: transfers (NCCL kernels) against compute kernels."""
from ffpipe.pipeline.trace import kernel_overlap


def test_overlap_counts_only_the_time_transfers_and_compute_share():
    k = lambda name, ts, dur: {"cat": "kernel", "name": name, "ts": ts, "dur": dur}  # noqa: E731
    trace = {"traceEvents": [k("ncclDevKernel_SendRecv", 0, 100), k("conv", 50, 100), k("relu", 120, 60),
                             k("ncclDevKernel_SendRecv", 300, 50), {"cat": "cpu_op", "name": "x", "ts": 0, "dur": 9}]}
    got = kernel_overlap(trace)
    assert got == {"window_ms": 0.35, "nccl_ms": 0.15, "compute_ms": 0.13, "overlap_ms": 0.05}
