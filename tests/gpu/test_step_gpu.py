"""The lean unit step on a GPU: the boundary norm and goodness in bf16 and channels_last, and the
CUDA-graphed stage step against the eager one."""
import copy
import gc

import pytest
import torch

from ffpipe.kernels import row_norm
from ffpipe.ff.goodness import goodness, normalize_output
from ffpipe.learners import build_learners
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions
from tests.helpers import make_config

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
    assert extra < 1.1 * z.numel() * z.element_size(), f"{extra} bytes beyond the input"
    assert (out.float() - plain.float()).abs().max() <= 0.02  # bf16 rounding of values ~ |3|


@pytest.mark.parametrize("shape", [(64, 256, 56, 56), (3, 5, 300, 301)])
def test_long_rows_go_to_the_chunked_kernels_and_match_the_plain_formula(shape):
    z = (torch.randn(shape, device=CUDA) * 3 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    assert z[0].numel() >= row_norm.MIN_ROW
    plain = torch.nn.functional.layer_norm(z.double(), z.shape[1:])
    out = normalize_output(z)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    # fp32 statistics: the only error left is the output's bf16 rounding (2^-9 of values ~ |4|)
    assert (out.double() - plain).abs().max() <= 4 * 2**-8


@pytest.mark.parametrize("after_conv", [False, True])
def test_lean_batch_norm_in_slices_matches_fp64_and_overwrites_only_a_conv_output(monkeypatch, after_conv):
    """Past the index limit the batch is normalised in slices with the whole batch's statistics;
    after a convolution the input's gradient is written over the conv output."""
    from ffpipe.kernels import batchnorm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 1, bias=False) if after_conv else torch.nn.Identity()
    plain = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(8)).to(CUDA).to(memory_format=torch.channels_last)
    lean = batchnorm.lean_batchnorms(copy.deepcopy(plain))
    exact = copy.deepcopy(plain).double().cpu()  # fp64 on the CPU: the reference for both
    x = (torch.randn(10, 8, 6, 6, device=CUDA) * 2 + 1).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(batchnorm, "INDEX_LIMIT", 3 * x[0].numel() + 5)  # slices of 3, 3, 3 and 1 samples
    results, overwritten = [], []
    original = batchnorm._input_gradient
    monkeypatch.setattr(batchnorm, "_input_gradient", lambda *a, out: overwritten.append(out.data_ptr() == a[1].data_ptr()) or original(*a, out=out))
    for net, xs in ((exact, x.double().cpu()), (plain, x), (lean, x)):
        xi = xs.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=xs.is_cuda):
            out = net(xi)
        (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=out.device).view_as(out)).sum().backward()
        bn = net[1]
        results.append([t.detach().double().cpu() for t in (out, xi.grad, bn.weight.grad, bn.bias.grad,
                                                             bn.running_mean, bn.running_var)])
    assert overwritten == [after_conv]
    assert lean(x).is_contiguous(memory_format=torch.channels_last)
    errors = [[(t - r).abs().max().item() for t, r in zip(res, results[0])] for res in results[1:]]
    print("max abs error vs fp64 (out, grad x, grad w, grad b, running mean, running var): "
          f"plain {errors[0]}, lean {errors[1]}")
    for mine, torchs in zip(*errors[::-1]):
        assert mine <= 2 * torchs + 1e-3  # as close to the exact values as torch's own kernels


def test_lean_batch_norm_backward_allocates_nothing_batch_sized():
    from ffpipe.kernels import batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 1, bias=False), torch.nn.BatchNorm2d(64)).to(CUDA)
    net = batchnorm.lean_batchnorms(net.to(memory_format=torch.channels_last))
    x = torch.randn(256, 64, 56, 56, device=CUDA).bfloat16().contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    grad = torch.randn_like(out)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out.backward(grad)
    torch.cuda.synchronize()
    # the conv's input gradient (one map) is the only batch-sized tensor the backward makes
    assert torch.cuda.max_memory_allocated() - before <= 1.1 * x.numel() * x.element_size()


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
    assert graphed.graphed.replays and eager.graphed is None
    for p, q in zip(eager.learners.parameters(), graphed.learners.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    for a, b in zip(stats_e, stats_g):  # the metric sums are replayed too, not stale
        assert abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, a["loss"]) and a["accuracy"] == pytest.approx(b["accuracy"], abs=0.02)
    torch.testing.assert_close(out_e.x, out_g.x, rtol=2e-2, atol=2e-2)
    assert out_g.x.data_ptr() != graphed.graphed.replays[(True, True)].outputs[0].data_ptr()  # a copy


@pytest.mark.parametrize("microbatches, optimizer", [(2, "adamw"), (3, "sgd")])
def test_graphed_microbatches_learn_what_eager_microbatches_learn(microbatches, optimizer):
    """A graph per kind of slice (first: zeroes the gradients, middle, last: steps); 64 rows in 3
    slices are 22, 21, 21 rows, so the first graph has another shape than the others."""
    common = [f"train.microbatches={microbatches}", f"train.optimizer={optimizer}", "train.precision=fp32",
              "algo.grad_clip=5.0", "train.lr=0.01"]
    eager, graphed = _stage("off", *common), _stage("on", *common)
    out_e, stats_e = _train_sliced(eager, microbatches)
    out_g, stats_g = _train_sliced(graphed, microbatches)
    kinds = {(True, False), (False, True)} | ({(False, False)} if microbatches > 2 else set())
    assert set(graphed.graphed.replays) == kinds and graphed.step == eager.step == 10
    for p, q in zip(eager.learners.parameters(), graphed.learners.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    for a, b in zip(stats_e, stats_g):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, a["loss"]) and a["accuracy"] == pytest.approx(b["accuracy"], abs=0.02)
    torch.testing.assert_close(out_e.x, out_g.x, rtol=2e-2, atol=2e-2)
    graphed.release_graph()
    assert not graphed.graphed.replays


def _train_sliced(stage, microbatches, steps=10, batch=64):
    """`steps` optimizer steps of `batch` rows, each in row slices as pipeline/source.py cuts them."""
    gen = torch.Generator(device=CUDA).manual_seed(1)
    for i in range(steps):
        x = torch.randn(batch, 3, 16, 16, device=CUDA, generator=gen)
        y = torch.randint(0, 10, (batch,), device=CUDA, generator=gen)
        for m, (xm, ym) in enumerate(zip(x.tensor_split(microbatches), y.tensor_split(microbatches))):
            out = stage.train_step(Message(Phase.TRAIN, 0, i, x=xm, y=ym, micro=m, micros=microbatches,
                                           step_rows=batch))
    return out, stage.read_stats()


@pytest.mark.parametrize("limit_s, graphed", [(0.0, False), (60.0, True)])
def test_auto_graphs_leave_a_long_step_eager_and_it_learns_the_same(monkeypatch, limit_s, graphed):
    from ffpipe.pipeline import graphed as graphed_mod

    monkeypatch.setattr(graphed_mod, "GRAPH_MAX_STEP_S", limit_s)  # every step is "long" at 0 s
    common = ["train.precision=fp32", "train.lr=0.01"]
    auto, eager = _stage("auto", *common), _stage("off", *common)
    _train(auto)
    _train(eager)
    assert auto.graphed.declined is not graphed and bool(auto.graphed.replays) is graphed
    for p, q in zip(eager.learners.parameters(), auto.learners.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    auto.release_graph()


def test_a_step_declined_after_one_slow_warm_up_is_timed_again_and_captured(monkeypatch):
    """A run's first steps share the host (imports, compiles, shards read): one slow warm-up must
    not keep a short step eager for the whole run."""
    import time

    from ffpipe.pipeline import graphed as graphed_mod

    monkeypatch.setattr(graphed_mod, "GRAPH_MAX_STEP_S", 0.3)
    common = ["train.precision=fp32", "train.lr=0.01"]
    auto, eager = _stage("auto", *common), _stage("off", *common)
    learn, calls = auto.graphed.learn, []

    def third_step_stalls(*args):
        calls.append(1)
        if len(calls) == 3:  # the timed warm-up
            time.sleep(0.4)
        return learn(*args)

    auto.graphed.learn = third_step_stalls
    _train(auto, steps=6)
    assert auto.graphed.declined and not auto.graphed.replays  # still eager before the retime
    _train(auto, steps=4)  # the 4th declined step is timed (short): the next one is captured
    assert not auto.graphed.declined and auto.graphed.replays
    _train(eager, steps=6)
    _train(eager, steps=4)
    for p, q in zip(eager.learners.parameters(), auto.learners.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-4)
    auto.release_graph()


def test_stage_zero_casts_its_images_once_to_what_the_first_layer_would_read():
    cast, kept = _stage("off", "train.precision=bf16"), _stage("off", "train.precision=bf16")
    kept.input_dtype = None
    x = torch.randn(64, 3, 16, 16, device=CUDA)
    prepared = cast._prepare(x)
    assert prepared.dtype == torch.bfloat16 and prepared.is_contiguous(memory_format=torch.channels_last)
    assert kept._prepare(x).dtype == torch.float32
    # the first step's losses (one forward from the same weights) are the same to the bit
    stats = [_train(stage, steps=1)[1] for stage in (cast, kept)]
    assert [row["loss"] for row in stats[0]] == [row["loss"] for row in stats[1]]
    with_aux = _stage("off", "train.precision=bf16", "algo.aux=reconstruction")
    assert with_aux.input_dtype is None  # the reconstruction term reads the images themselves


def test_a_graphed_stage_resumes_from_a_checkpoint_and_names_a_non_finite_unit():
    stage = _stage("on", "train.lr=0.01")
    _train(stage, steps=6)
    state = copy.deepcopy(stage.state_dict())
    resumed = _stage("on", "train.lr=0.01")
    resumed.load_state_dict(state)
    assert resumed.step == 6 and int(resumed.meter.step_t) == 6
    _train(resumed, steps=6)
    broken = _stage("on", "train.lr=1e12", "train.warmup_fraction=0", "train.optimizer=sgd")
    with pytest.raises(Exception, match="became non-finite"):
        _train(broken, steps=8)


def test_per_unit_backward_holds_less_memory_than_backprop():
    peaks = {}
    gc.collect()  # stages of earlier tests (and their graphs' memory pools) freed first
    for algo in ("bp", "sff"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        stage = _stage("off", f"algo.name={algo}", "train.precision=bf16")
        _train(stage, steps=3, batch=512)
        peaks[algo] = torch.cuda.max_memory_allocated()
        del stage
    assert peaks["sff"] < 0.8 * peaks["bp"], peaks
