"""`rounded`: an fp32 value rounded to a narrower dtype as torch rounds it, inside a Triton kernel
(the pooled head's kernels round their means and shares once, as torch's ops do)."""
from __future__ import annotations

from ffpipe.kernels import tl, triton

if triton is not None:
    @triton.jit
    def rounded(x, dtype: tl.constexpr):
        # fp32 x rounded to `dtype` (to nearest, ties to even, as torch rounds), back in fp32. bf16
        # by hand: Triton's interpreter truncates where a GPU rounds, and the CPU check must agree.
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # no 32-bit literal mask
            return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
        return x.to(dtype).to(tl.float32)
