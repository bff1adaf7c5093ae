"""Stage replicas on GPUs: the synced batch norm's CUDA path (torch's fused kernels, no host
sync) equals plain batch norm over the whole batch, in a one-process NCCL group here (the
combination of several replicas' moments is the CPU tests' business: same formulas)."""
import os

import pytest
import torch
import torch.distributed as dist

from ffpipe.pipeline.replicas import SyncedBatchNorm

pytestmark = pytest.mark.gpu


@pytest.fixture
def nccl_group():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_synced_batch_norm_on_cuda_equals_batch_norm(nccl_group, dtype):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(8).cuda()
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    synced = SyncedBatchNorm(bn, None)
    x = torch.randn(16, 8, 5, 5, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = bn(a)
    ref.backward(g)
    out = synced(b)
    out.backward(g)
    tol = 1e-5 if dtype is torch.float32 else 2e-2
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.float(), ref.float(), atol=tol)
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=tol)
    assert torch.allclose(bn.weight.grad, synced.weight.grad, atol=tol * 10)
    assert torch.allclose(bn.running_var, synced.running_var, atol=1e-5)
