"""The boundary norm on a GPU: layer norm over each sample's elements, in Triton kernels.

torch's layer-norm kernel gives each row (sample) to one thread block. A ResNet-50 unit at 224 px
hands on 256 rows of 802,816 elements at batch 256: 256 blocks for 132 SMs, each walking its row
alone, ran at 1.55 ms where the bytes need ~0.4 ms (H200, 2026-11-28), 15% of the SFF step.
Here every row is cut into chunks, one program per (row, chunk): the first kernel writes each
chunk's count, mean and sum of squared deviations (Welford's terms, fp32), a small one combines
the chunks of a row (Chan et al.), and the last writes (x - mean) * rstd in x's dtype. That
reads x twice and writes it once, whatever the batch, as the plain layer norm does; the
statistics are fp32 and every output is rounded once.

Only for CUDA tensors whose samples are contiguous (NCHW, or channels_last through its NHWC
view) on a device Triton compiles for (kernels.triton_runs).
"""
from __future__ import annotations

import torch

from ffpipe.kernels import tl, triton, triton_runs

BLOCK = 4096          # elements per program step
CHUNK_BLOCKS = 16     # program steps per chunk: a chunk is 64 Ki elements
EPS = 1e-5            # F.layer_norm's default
# Rows shorter than this go to F.layer_norm, which is as fast when there are many of them
MIN_ROW = 2**17


if triton is not None:
    @triton.jit
    def _chunk_stats(x_ptr, mean_ptr, m2_ptr, row_len, chunks, BLOCK: tl.constexpr, CHUNK_BLOCKS: tl.constexpr):
        row, chunk = tl.program_id(0), tl.program_id(1)
        base = x_ptr + row.to(tl.int64) * row_len
        start = chunk * (BLOCK * CHUNK_BLOCKS)
        offs = tl.arange(0, BLOCK)
        count = tl.zeros((), tl.float32)
        mean = tl.zeros((), tl.float32)
        m2 = tl.zeros((), tl.float32)
        for step in range(CHUNK_BLOCKS):
            idx = start + step * BLOCK + offs
            mask = idx < row_len
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            n_b = tl.sum(mask.to(tl.float32), axis=0)
            mean_b = tl.sum(x, axis=0) / tl.maximum(n_b, 1.0)
            dev = tl.where(mask, x - mean_b, 0.0)
            m2_b = tl.sum(dev * dev, axis=0)
            # Chan's combination of the running terms with this block's
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * n_b / tl.maximum(total, 1.0)
            m2 = m2 + m2_b + delta * delta * count * n_b / tl.maximum(total, 1.0)
            count = total
        tl.store(mean_ptr + row * chunks + chunk, mean)
        tl.store(m2_ptr + row * chunks + chunk, m2)

    @triton.jit
    def _combine(mean_ptr, m2_ptr, count_ptr, out_ptr, K, R, row_len, count_scale, eps, BLOCK_K: tl.constexpr):
        # One program per row: Chan's combination of its K parts, the mean first, then the squared
        # deviations about it (fp32); out[0, row] the mean, out[1, row] 1/std.
        row = tl.program_id(0)
        acc = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = ks < K
            n_k = tl.load(count_ptr + ks, mask=ok, other=0.0).to(tl.float32) * count_scale
            acc += tl.load(mean_ptr + row * K + ks, mask=ok, other=0.0) * n_k
        mean = tl.sum(acc, axis=0) / row_len
        acc = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = ks < K
            n_k = tl.load(count_ptr + ks, mask=ok, other=0.0).to(tl.float32) * count_scale
            dev = tl.load(mean_ptr + row * K + ks, mask=ok, other=0.0) - mean
            acc += tl.where(ok, tl.load(m2_ptr + row * K + ks, mask=ok, other=0.0) + n_k * dev * dev, 0.0)
        tl.store(out_ptr + row, mean)
        tl.store(out_ptr + R + row, 1.0 / tl.sqrt(tl.sum(acc, axis=0) / row_len + eps))

    @triton.jit
    def _apply(x_ptr, y_ptr, mean_ptr, rstd_ptr, row_len, BLOCK: tl.constexpr):
        row, block = tl.program_id(0), tl.program_id(1)
        offset = row.to(tl.int64) * row_len
        idx = block * BLOCK + tl.arange(0, BLOCK)
        mask = idx < row_len
        x = tl.load(x_ptr + offset + idx, mask=mask, other=0.0).to(tl.float32)
        y = (x - tl.load(mean_ptr + row)) * tl.load(rstd_ptr + row)
        tl.store(y_ptr + offset + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


def chunk_counts(row_len: int, chunks: int, device: torch.device) -> torch.Tensor:
    """Elements in each chunk of a row (the last may be short); made on the device, so that a
    CUDA graph can capture it (a copy from pageable host memory cannot be)."""
    size = BLOCK * CHUNK_BLOCKS
    starts = torch.arange(chunks, device=device, dtype=torch.float32) * size
    return (row_len - starts).clamp(max=size)


def combine(mean_RK: torch.Tensor, m2_RK: torch.Tensor, count_K: torch.Tensor, row_len: int,
            count_scale: float = 1.0) -> torch.Tensor:
    """Each row's mean and 1/std (a 2 x rows tensor) from its K parts' means and squared-deviation
    sums, the parts holding count_K * count_scale elements. Where Triton runs, one kernel: torch's
    formula takes a dozen launches, a few microseconds each even in a CUDA graph, on every unit of
    every step."""
    rows, parts = mean_RK.shape
    if not triton_runs(mean_RK):
        count_K = count_K * count_scale
        mean_R = (mean_RK * count_K).sum(1) / row_len
        m2_R = (m2_RK + count_K * (mean_RK - mean_R[:, None]).square()).sum(1)
        return torch.stack((mean_R, torch.rsqrt(m2_R / row_len + EPS)))
    out = torch.empty(2, rows, device=mean_RK.device, dtype=torch.float32)
    _combine[(rows,)](mean_RK, m2_RK, count_K, out, parts, rows, float(row_len), float(count_scale), EPS,
                      BLOCK_K=min(triton.next_power_of_2(parts), 1024))
    return out


def layer_norm_rows(flat: torch.Tensor) -> torch.Tensor:
    """Layer norm without affine of each row of a contiguous CUDA matrix (rows x elements)."""
    return normalize_rows(flat, *row_stats(flat))


def row_stats(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean and 1/std (fp32) of a contiguous CUDA matrix, from its chunks' terms."""
    rows, row_len = flat.shape
    chunks = triton.cdiv(row_len, BLOCK * CHUNK_BLOCKS)
    mean_RK = torch.empty(rows, chunks, device=flat.device, dtype=torch.float32)
    m2_RK = torch.empty_like(mean_RK)
    _chunk_stats[(rows, chunks)](flat, mean_RK, m2_RK, row_len, chunks, BLOCK=BLOCK, CHUNK_BLOCKS=CHUNK_BLOCKS)
    return combine(mean_RK, m2_RK, chunk_counts(row_len, chunks, flat.device), row_len)


def normalize_rows(flat: torch.Tensor, mean_R: torch.Tensor, rstd_R: torch.Tensor) -> torch.Tensor:
    """(x - mean) * rstd per row, in x's dtype: one read and one write of a contiguous matrix."""
    rows, row_len = flat.shape
    out = torch.empty_like(flat)
    _apply[(rows, triton.cdiv(row_len, BLOCK))](flat, out, mean_R, rstd_R, row_len, BLOCK=BLOCK)
    return out
