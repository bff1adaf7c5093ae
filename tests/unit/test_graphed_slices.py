"""GraphedStep's bookkeeping on the CPU: which graph each slice replays, when the gradients are
zeroed, kept or dropped, when the optimizer steps. CUDA graphs are stood in for by a recorder
that keeps the calls made during a capture (running none of them, as a capture runs no kernel)
and runs them again on each replay, on the same tensors. Its one modelled rule is CUDA's: a
captured backward into gradients that were None writes them afresh on every replay (the
allocation it made is replayed), while one into existing gradients adds to them.
(The GPU test of the real graphs: tests/gpu/test_step_gpu.py.)"""
import contextlib

import pytest
import torch

from ffpipe.pipeline import graphed
from ffpipe.pipeline.graphed import WARMUP_STEPS, GraphedStep


class FakeGraph:
    capturing: "FakeGraph | None" = None

    def __init__(self):
        self.calls = []

    def replay(self):
        for call in self.calls:
            call()

    def pool(self):
        return id(self)

    def reset(self):
        self.calls = []


@contextlib.contextmanager
def fake_capture(graph, pool=None, capture_error_mode=None):
    FakeGraph.capturing = graph
    try:
        yield
    finally:
        FakeGraph.capturing = None


class FakeStream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def no_cuda(monkeypatch):
    for name, value in (("current_stream", lambda device=None: FakeStream()),
                        ("Stream", lambda device=None: FakeStream()),
                        ("stream", lambda s: contextlib.nullcontext()),
                        ("device", lambda d: contextlib.nullcontext()),
                        ("synchronize", lambda device=None: None),
                        ("CUDAGraph", FakeGraph), ("graph", fake_capture)):
        monkeypatch.setattr(graphed.torch.cuda, name, value)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)


class Model:
    """A linear learner with SGD and momentum: learn() is the stage's step on one slice."""

    def __init__(self):
        torch.manual_seed(0)
        self.w = torch.randn(4, 3, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.1, momentum=0.9)
        self.steps = 0

    def _learn(self, x, skips, y, share, ends_step):
        loss = ((x @ self.w - y) ** 2).mean() * share
        loss.backward()
        if ends_step:
            self.opt.step()
            self.steps += 1
        return (x @ self.w).detach(), ()

    def learn(self, x, skips, y, share=1.0, ends_step=True):
        graph = FakeGraph.capturing
        if graph is None:
            return self._learn(x, skips, y, share, ends_step)
        out = torch.empty(len(x), 3)  # the graph's static output
        fresh = self.w.grad is None

        def replayed():
            if fresh:
                self.w.grad = None
            out.copy_(self._learn(x, skips, y, share, ends_step)[0])
        graph.calls.append(replayed)
        return out, ()

    def reset_grads(self, set_to_none):
        if FakeGraph.capturing is not None:
            assert not set_to_none, "a graph cannot drop the gradients"
            FakeGraph.capturing.calls.append(lambda: self.opt.zero_grad(set_to_none=False))
        else:
            self.opt.zero_grad(set_to_none=set_to_none)


def _slices(steps, micro, rows=10):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(rows, 4, generator=gen), torch.randn(rows, 3, generator=gen)
        for m, (xm, ym) in enumerate(zip(x.tensor_split(micro), y.tensor_split(micro))):
            yield m, m == micro - 1, xm, ym, len(xm) / rows


def _eager(steps, micro):
    """The stage's eager path (pipeline/stage.py): gradients added over a step's slices, dropped after it."""
    model, outs = Model(), []
    for m, ends, x, y, share in _slices(steps, micro):
        outs.append(model.learn(x, (), y, share, ends)[0])
        if ends:
            model.reset_grads(True)
    return model, outs


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_graphed_slices_learn_what_the_eager_slices_learn_bit_for_bit(no_cuda, micro):
    """10 rows in 3 slices are 4, 3, 3 rows: the first slice's graph has a shape of its own."""
    steps = WARMUP_STEPS + 5
    reference, outs = _eager(steps, micro)
    model = Model()
    step = GraphedStep(model.learn, model.reset_grads, torch.device("cpu"), microbatches=micro)
    for i, (m, ends, x, y, share) in enumerate(_slices(steps, micro)):
        out, _ = step(x, (), y, share, m, ends)
        assert torch.equal(out, outs[i]), f"slice {m} of step {i // micro}"
    kinds = {(True, True)} if micro == 1 else {(True, False), (False, True)} | ({(False, False)} if micro > 2 else set())
    assert set(step.replays) == kinds and model.steps == reference.steps == steps
    assert torch.equal(model.w, reference.w)
    step.release()
    assert not step.replays


def test_a_slice_of_another_shape_runs_eagerly_and_still_zeroes_a_steps_gradients(no_cuda):
    model, reference = Model(), Model()
    step = GraphedStep(model.learn, model.reset_grads, torch.device("cpu"), microbatches=2)
    gen = torch.Generator().manual_seed(2)
    for rows in [10] * (WARMUP_STEPS + 2) + [6, 10]:  # a short batch (drop_last = false) between full ones
        x, y = torch.randn(rows, 4, generator=gen), torch.randn(rows, 3, generator=gen)
        for m, (xm, ym) in enumerate(zip(x.tensor_split(2), y.tensor_split(2))):
            step(xm, (), ym, len(xm) / rows, m, m == 1)
            reference.learn(xm, (), ym, len(xm) / rows, m == 1)
        reference.reset_grads(True)
    assert len(step.replays) == 2 and torch.equal(model.w, reference.w)
