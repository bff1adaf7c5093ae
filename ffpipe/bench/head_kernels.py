"""`python -m ffpipe.bench.head_kernels`: per map shape, what a unit does to its output that BP
does not (the pooled head's pooling, the boundary norm, their backward after the block's last
ReLU), through the Triton kernels (kernels/window_pool.py) and through the plain path, in ms a
step. On a GPU each is one CUDA graph replayed `--reps` times; on the CPU the plain path runs
eagerly (the kernels need a GPU). This is how window_pool.PLAIN_UP_TO was chosen: see
docs/benchmarks.md (the step, not the shape alone, decided it).
"""
from __future__ import annotations

import argparse
import time

import torch

from ffpipe.ff import goodness
from ffpipe.kernels import window_pool
from ffpipe.kernels.relu import LeanReLU

# ResNet18 at 32 px, batch 2,048; ResNet-50 at 224 px, batch 256 (ResNet-152's maps are the same)
SHAPES = [(2048, 64, 32, 32), (2048, 128, 16, 16), (2048, 256, 8, 8), (256, 256, 56, 56),
          (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)]
POOL = 4  # the pooled head's side


def _step(y: torch.Tensor, weight: torch.Tensor):
    def step() -> torch.Tensor:
        z = LeanReLU()(y * 1)  # a non-leaf, as a block's output is
        pooled, stats = goodness.pool_and_stats(z, POOL)
        pending = goodness.pending_norm(z, pooled, stats, sole_reader=True)
        (pooled.float() * weight).sum().backward()
        return goodness.boundary_norm(pending)  # read after the backward, as a unit's stage does
    return step


def time_step(shape, fused: bool, reps: int, device: torch.device) -> float:
    """ms a step, through the kernels (`fused`) or the plain path."""
    real = window_pool.fuses
    window_pool.fuses = lambda z: fused
    try:
        torch.manual_seed(0)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        y = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        y.requires_grad_(True)
        step = _step(y, torch.randn(shape[0], shape[1], POOL, POOL, device=device))
        return _graphed_ms(step, y, reps) if device.type == "cuda" else _eager_ms(step, reps)
    finally:
        window_pool.fuses = real


def _eager_ms(step, reps: int) -> float:
    step()
    started = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - started) * 1000 / reps


def _graphed_ms(step, y: torch.Tensor, reps: int) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as a capture wants
        for _ in range(3):
            y.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    y.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m ffpipe.bench.head_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=None, help="maps as N,C,H,W (default: ResNet18 32 px, ResNet-50)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    kernels = device.type == "cuda" and window_pool.triton_runs(torch.empty(1, device=device))
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}")
    print("| map | elements a sample | kernels ms | plain ms | kernels / plain | fused by default |")
    print("|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        fused = time_step(shape, True, args.reps, device) if kernels else None
        plain = time_step(shape, False, args.reps, device)
        per_sample = shape[1] * shape[2] * shape[3]
        rows.append({"shape": shape, "kernels_ms": fused, "plain_ms": plain})
        ratio = f"{fused / plain:.2f}" if fused else "-"
        print(f"| {' x '.join(map(str, shape))} | {per_sample:,} | {f'{fused:.3f}' if fused else '-'} | "
              f"{plain:.3f} | {ratio} | {'yes' if per_sample > window_pool.PLAIN_UP_TO else 'no'} |", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
