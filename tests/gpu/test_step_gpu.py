"""The lean unit step on a GPU: the boundary norm and goodness in bf16 and channels_last, and the
CUDA-graphed stage step against the eager one."""
import copy

import pytest
import torch

from ffpipe.ff.goodness import goodness, normalize_output
from ffpipe.learners import build_learners
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions
from tests.conftest import make_config

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


def test_boundary_norm_of_a_bf16_channels_last_map_matches_the_plain_formula_without_copies():
    z = (torch.randn(256, 64, 32, 32, device=CUDA) * 3 + 1).bfloat16()
    z = z.contiguous(memory_format=torch.channels_last)
    plain = torch.nn.functional.layer_norm(z.float(), z.shape[1:]).bfloat16()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = normalize_output(z)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    # only the output itself (plus statistics): no fp32 or NCHW copy of the map
    assert extra < 1.1 * z.numel() * z.element_size()
    assert (out.float() - plain.float()).abs().max() <= 0.02  # bf16 rounding of values ~ |3|


def test_goodness_of_bf16_head_maps_matches_fp32_within_rounding():
    a = (torch.randn(512, 10, 32, 32, device=CUDA) * 2).bfloat16().requires_grad_()
    g = goodness(a)
    torch.testing.assert_close(g, a.detach().float().pow(2).mean(dim=(2, 3)), rtol=1e-4, atol=0)
    g.sum().backward()
    assert a.grad.dtype == torch.bfloat16


def _stage(cuda_graphs: str, *overrides):
    cfg = make_config("model.name=resnet18", "train.device=cuda", f"train.cuda_graphs={cuda_graphs}",
                      *overrides)
    torch.manual_seed(0)
    learners = build_learners(cfg, (3, 16, 16), 10)
    return Stage(0, copy.deepcopy(learners), StageOptions.of(cfg), 40, CUDA)


def _train(stage, steps=10, batch=64):
    gen = torch.Generator(device=CUDA).manual_seed(1)
    for i in range(steps):
        x = torch.randn(batch, 3, 16, 16, device=CUDA, generator=gen)
        y = torch.randint(0, 10, (batch,), device=CUDA, generator=gen)
        out = stage.train_step(Message(Phase.TRAIN, 0, i, x=x, y=y))
    return out, stage.read_stats()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_a_graphed_stage_learns_what_the_eager_stage_learns(optimizer, granularity):
    common = [f"train.optimizer={optimizer}", f"model.granularity={granularity}", "train.precision=fp32",
              "algo.grad_clip=5.0", "train.lr=0.01"]
    eager, graphed = _stage("off", *common), _stage("on", *common)
    out_e, stats_e = _train(eager)
    out_g, stats_g = _train(graphed)
    assert graphed.graphed.graph is not None and eager.graphed is None
    for p, q in zip(eager.learners.parameters(), graphed.learners.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    for a, b in zip(stats_e, stats_g):  # the metric sums are replayed too, not stale
        assert abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, a["loss"]) and a["accuracy"] == pytest.approx(b["accuracy"], abs=0.02)
    torch.testing.assert_close(out_e.x, out_g.x, rtol=2e-2, atol=2e-2)
    assert out_g.x.data_ptr() != graphed.graphed._outputs[0].data_ptr()  # a copy, not the graph's buffer


def test_a_graphed_stage_resumes_from_a_checkpoint_and_names_a_non_finite_unit():
    stage = _stage("on", "train.lr=0.01")
    _train(stage, steps=6)
    state = copy.deepcopy(stage.state_dict())
    resumed = _stage("on", "train.lr=0.01")
    resumed.load_state_dict(state)
    assert resumed.step == 6 and int(resumed._step_t) == 6
    _train(resumed, steps=6)
    broken = _stage("on", "train.lr=1e12", "train.warmup_fraction=0", "train.optimizer=sgd")
    with pytest.raises(Exception, match="became non-finite"):
        _train(broken, steps=8)


def test_per_unit_backward_holds_less_memory_than_backprop():
    peaks = {}
    for algo in ("bp", "sff"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        stage = _stage("off", f"algo.name={algo}", "train.precision=bf16")
        _train(stage, steps=3, batch=512)
        peaks[algo] = torch.cuda.max_memory_allocated()
        del stage
    assert peaks["sff"] < 0.8 * peaks["bp"], peaks
