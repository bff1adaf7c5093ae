import copy
import weakref

import pytest
import torch

from ffpipe.learners import build_learners
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions
from tests.helpers import make_config


def _learners(*overrides):
    cfg = make_config("model.name=small_cnn", *overrides)
    return cfg, build_learners(cfg, (3, 16, 16), 10)


def test_nothing_leaving_a_unit_carries_a_grad_fn():
    _, learners = _learners("model.granularity=layer")
    x, skips, y = torch.randn(4, 3, 16, 16), (), torch.randint(0, 10, (4,))
    for learner in learners:
        out = learner(x, skips, y)
        assert out.loss.grad_fn is not None
        assert out.x.grad_fn is None and not out.x.requires_grad
        assert all(s.grad_fn is None for s in out.skips)
        x, skips = out.x, out.skips


def test_a_units_loss_changes_no_other_units_gradients():
    _, learners = _learners("model.granularity=layer")
    x, skips, y = torch.randn(4, 3, 16, 16), (), torch.randint(0, 10, (4,))
    losses = []
    for learner in learners:
        out = learner(x, skips, y)
        losses.append(out.loss)
        x, skips = out.x, out.skips
    losses[3].backward()  # unit 3 closes a residual block: it pops unit 2's input as its skip
    for k, learner in enumerate(learners):
        grads = [p.grad for p in learner.parameters()]
        if k == 3:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), f"unit {k} received a gradient from unit 3"


def _train(stages, batches):
    for x, y in batches:
        msg = Message(Phase.TRAIN, 0, 0, x=x, y=y)
        for stage in stages:
            msg = stage.train_step(msg)
    return [p for s in stages for p in s.learners.parameters()]


def _summed_backward_reference(cfg, learners, batches, total_steps):
    """The step before backward-per-unit: one backward over the sum of every unit's loss."""
    from ffpipe.ff.optim import build_optimizer, lr_at, set_lr

    groups = [{"params": list(l.parameters())} for l in learners]
    optimizer = build_optimizer(groups, cfg.train, torch.device("cpu"))
    for step, (x, y) in enumerate(batches):
        set_lr(optimizer, lr_at(step, total_steps, cfg.train))
        skips, losses = (), []
        for learner in learners:
            out = learner(x, skips, y)
            x, skips = out.x, out.skips
            losses.append(out.loss)
        torch.stack([l.float() for l in losses]).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p for l in learners for p in l.parameters()]


def test_a_backward_per_unit_gives_the_parameters_of_one_summed_backward_bit_for_bit():
    cfg, learners = _learners("model.granularity=layer", "train.optimizer=adamw",
                              "train.warmup_fraction=0.3")
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(4)]
    reference = _summed_backward_reference(cfg, copy.deepcopy(learners), batches, 10)
    stage = Stage(0, copy.deepcopy(learners), StageOptions.of(cfg), 10, torch.device("cpu"))
    trained = _train([stage], batches)
    assert len(trained) == len(reference) > 0
    for p, q in zip(trained, reference):
        assert torch.equal(p, q)
    assert not torch.equal(trained[0], next(learners[0].parameters()))  # it did train


class _Box:
    def __init__(self, tensor):
        self.tensor = tensor


class _SavedActivations:
    """Elements of the tensors autograd keeps for backward: now, and the most at any time."""

    def __init__(self):
        self.live = self.peak = 0

    def hooks(self):
        def pack(t):
            box = _Box(t)
            self.live += t.numel()
            self.peak = max(self.peak, self.live)
            weakref.finalize(box, self._free, t.numel())  # runs when autograd drops it
            return box

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor)

    def _free(self, n):
        self.live -= n


def test_a_stage_keeps_the_saved_activations_of_one_unit_at_a_time():
    cfg, learners = _learners("model.granularity=layer")
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    per_unit, skips, h = [], (), x
    for learner in copy.deepcopy(learners):
        saved = _SavedActivations()
        with saved.hooks():
            out = learner(h, skips, y)
        per_unit.append(saved.peak)
        h, skips = out.x, out.skips
    stage, saved = Stage(0, learners, StageOptions.of(cfg), 10, torch.device("cpu")), _SavedActivations()
    with saved.hooks():
        stage.train_step(Message(Phase.TRAIN, 0, 0, x=x, y=y))
    assert saved.peak == max(per_unit) < sum(per_unit) / 2
    assert saved.live == 0


def test_one_stage_equals_units_split_over_stages_bit_for_bit():
    cfg, learners = _learners("model.granularity=layer", "train.optimizer=adamw")
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    whole = Stage(0, copy.deepcopy(learners), StageOptions.of(cfg), 10, torch.device("cpu"))
    split = [Stage(k, copy.deepcopy(learners[a:b]), StageOptions.of(cfg), 10, torch.device("cpu"))
             for k, (a, b) in enumerate([(0, 2), (2, 5), (5, 7)])]
    for p, q in zip(_train([whole], batches), _train(split, batches)):
        assert torch.equal(p, q)
    assert whole.read_stats()[0]["loss"] > 0


def test_stage_reports_loss_and_accuracy_per_unit_without_syncing_every_step():
    cfg, learners = _learners()
    stage = Stage(0, learners, StageOptions.of(cfg), 10, torch.device("cpu"))
    _train([stage], [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))] * 2)
    rows = stage.read_stats()
    assert [r["unit"] for r in rows] == [0, 1, 2, 3]
    assert all(r["loss"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert stage.pending_steps == 0  # a read starts a new window
    _train([stage], [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))])
    assert stage.pending_steps == 1 and [r["loss"] for r in stage.read_stats()] != [r["loss"] for r in rows]


def test_a_stage_refuses_activations_shaped_for_another_model():
    import pytest

    from ffpipe.errors import PipelineError
    from ffpipe.models import UnitShape

    cfg, learners = _learners()
    stage = Stage(1, learners[2:], StageOptions.of(cfg), 10, torch.device("cpu"), expect=UnitShape((16, 16, 16), ()))
    good = Message(Phase.TRAIN, 0, 0, x=torch.randn(2, 16, 16, 16), y=torch.tensor([0, 1]))
    stage.train_step(good)
    with pytest.raises(PipelineError, match=r"expects activations \[16, 16, 16\] .* received \[8, 16, 16\]"):
        stage.train_step(good.replace(x=torch.randn(2, 8, 16, 16)))


def test_cuda_graphs_are_decided_in_one_place_for_every_case():
    from ffpipe.errors import ConfigError
    from ffpipe.pipeline.graphed import GRAPH_MAX_STEP_S, plan_graphs

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device name: no GPU needed to decide
    assert plan_graphs("auto", gpu).capture and plan_graphs("auto", gpu).max_step_s == GRAPH_MAX_STEP_S
    assert plan_graphs("on", gpu).max_step_s is None  # 'on' captures whatever the step's length
    assert plan_graphs("auto", gpu, replicated=True).max_step_s is None  # replicas replay alike
    assert not plan_graphs("auto", cpu).capture and not plan_graphs("off", gpu).capture
    assert not plan_graphs("auto", gpu, dropout=True).capture  # host-drawn masks: eager
    assert not plan_graphs("on", cpu, training=False).capture  # evaluation: nothing to capture
    for setting, device, dropout, says in (("on", cpu, False, "needs a CUDA device"),
                                           ("on", gpu, True, "cannot go with model.dropout")):
        with pytest.raises(ConfigError, match=f"train.cuda_graphs.*{says}"):
            plan_graphs(setting, device, dropout=dropout)
