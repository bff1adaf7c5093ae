"""Stage replicas on GPUs: the synced batch norm's CUDA path (torch's fused kernels, no host
sync) equals plain batch norm over the whole batch, in a one-process NCCL group here (the
combination of several replicas' moments is the CPU tests' business: same formulas)."""
import os

import pytest
import torch
import torch.distributed as dist

from ffpipe.pipeline.replicas.synced import SyncedBatchNorm

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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_graphed_replicas_learn_as_eager_replicas(tmp_path):
    """One stage x 2 replicas on 2 GPUs: the step replayed as a CUDA graph, its NCCL collectives
    (synced batch norm, gradient sum) captured in it, learns what the eager step learns; prints
    each one's GPU time per step (the summary's busy_step_s)."""
    from tests.helpers.runs import assert_same_parameters, run_ffpipe, summary

    common = ["model.name=resnet18", "model.granularity=block", "data.name=synthetic",
              "data.synthetic_train=8192", "data.synthetic_test=1024", "data.synthetic_shape=[3, 32, 32]",
              "train.batch_size=256", "train.max_steps=24", "train.optimizer=sgd", "train.lr=0.01",
              "train.precision=fp32", "train.deterministic=true", "train.log_every=4",
              "train.eval_batch_size=1024", "run.progress=false", "run.plots=false"]
    runs = {}
    for graphs in ("auto", "off"):
        runs[graphs] = tmp_path / graphs
        run_ffpipe(common + [f"train.cuda_graphs={graphs}", f"run.dir={runs[graphs]}"], replicas=[2])
        busy = [s.get("busy_step_s") for s in summary(runs[graphs])["stages"]]
        print(f"\ncuda_graphs={graphs}: GPU s per step per stage {busy}")
    assert_same_parameters(runs["auto"], runs["off"], atol=1e-4)
