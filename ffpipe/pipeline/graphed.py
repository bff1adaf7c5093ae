"""A stage's whole training step (every unit's forward, loss and backward, the optimizer step and
the metric sums) replayed as one CUDA graph at a fixed batch shape.

At the batch sizes a pipeline stage sees, an eager step spends much of its time launching small
kernels; a graph launches them all at once. How it works:
  warm-up  the first WARMUP_STEPS batches train eagerly on a side stream (cuDNN picks its
           algorithms, the optimizer creates its state), as real steps;
  capture  the next batch's tensors become the static inputs, the gradients are dropped so that
           the captured backward writes them afresh (not accumulating), and the step is recorded
           (microbatches: one graph per kind of slice, see GraphedStep);
  replay   each batch is copied into the static inputs, the graph replays, and the outputs are
           copied out: the next replay overwrites the static outputs while a transport may
           still be sending the previous ones.
Everything the step reads besides its inputs must stay at the same address: the parameters and
optimizer state (updated in place), the learning rate (a device tensor filled before a replay),
the step count and the metric sums (device tensors zeroed in place).
A replicated stage's collectives (synced batch norm, the gradient sum; NCCL) are captured with
the step, which replays them; every replica captures at the same step, as each warms up alike.
Its share of the batch (a Python float in the loss) is part of the captured shape.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ffpipe.errors import ConfigError
from ffpipe.pipeline.sync import synchronize

WARMUP_STEPS = 3
# train.cuda_graphs = 'auto' keeps a step eager when its last warm-up took longer than this. A
# graph saves kernel launches, which a long step hides behind its own GPU work (ResNet-50 SFF at
# batch 2,560 on an H200: 4,653 img/s graphed, 4,632 eager), and its private memory pool costs
# room: ResNet-152's stage 0 of 4 fitted 13,605 images graphed and 15,363 eager (2026-11-28).
GRAPH_MAX_STEP_S = 0.5
# A declined step is timed again after these many eager steps (whole steps only): a run's first
# steps share the host with imports, kernel compiles and the first shards read, and one slow
# warm-up kept ResNet-50's 75 ms step eager for a whole run from streamed shards (H100,
# 2026-12-05; py-spy showed it).
RETIME_AFTER = (4, 16, 64)

# One capture at a time in a process: entering a capture synchronises the device and empties the
# allocator's cache, which must not happen while another stage thread is capturing.
_CAPTURE_LOCK = threading.Lock()

@dataclass(frozen=True)
class GraphPlan:
    capture: bool                    # the step replays as a CUDA graph once warmed up
    max_step_s: float | None = None  # ...unless its last warm-up took longer (None: always)
    microbatches: int = 1            # train.microbatches: a graph per kind of slice when > 1


def plan_graphs(setting: str, device: torch.device, *, dropout: bool = False, replicated: bool = False,
                training: bool = True, microbatches: int = 1) -> GraphPlan:
    """train.cuda_graphs for a stage on `device`: the one place it is decided.

    'auto' graphs every CUDA stage that trains (training shapes are static: every training batch
    is full), except a step too long to gain from it (GRAPH_MAX_STEP_S; replicated stages always
    capture, as every replica must replay the same collectives) and a stage with dropout (its
    masks are drawn on the host every step: a graph would replay one). Microbatches replay a
    graph per kind of slice (GraphedStep). 'on' insists, and says where it cannot be; 'off'
    keeps the eager step. Evaluation has no training step to capture."""
    if not training:
        return GraphPlan(False)
    if setting == "on" and dropout:
        raise ConfigError("config key 'train.cuda_graphs' 'on' cannot go with model.dropout (its masks "
                          "are drawn on the host every step, a graph would replay one): use 'auto' "
                          "(stages with dropout run eagerly) or no dropout")
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs = 'on' needs a CUDA device but this stage runs on "
                          f"{device}; use 'auto' (graphs where there is a GPU) or 'off'")
    if setting == "off" or device.type != "cuda" or dropout:
        return GraphPlan(False)
    return GraphPlan(True, GRAPH_MAX_STEP_S if setting == "auto" and not replicated else None, microbatches)


StepFn = Callable[[torch.Tensor, tuple, torch.Tensor, float, bool], tuple[torch.Tensor, tuple]]


def _signature(tensors: list[torch.Tensor], share: float) -> tuple:
    return tuple((t.shape, t.dtype, t.stride()) for t in tensors) + (share,)


@dataclass
class _Replay:
    """One captured slice of a step: its graph and the static tensors it reads and writes."""
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: tuple
    signature: tuple


class GraphedStep:
    """Calls `learn(x, skips, y, share, ends_step) -> (x_out, skips_out)` through CUDA graphs once
    warmed up.

    Whole steps (train.microbatches = 1) replay one graph, whose backward writes the gradients
    afresh. Microbatches replay one graph per kind of slice, keyed by (starts the step, ends it):
    the first zeroes the gradients, every slice adds to them, the last also takes the optimizer
    step. Their gradients are the last warm-up step's, zeroed and kept, so that every graph
    reads and writes the same tensors (and no parameter the step leaves without a gradient gets
    one); the graphs share one memory pool (they replay one at a time, on one stream).
    `reset_grads(set_to_none)` clears the stage's gradients. A slice of another shape than its
    graph's (none arrives in training: every training batch is full and split alike) runs eagerly.
    """

    def __init__(self, learn: StepFn, reset_grads: Callable[[bool], None], device: torch.device,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x, max_step_s: float | None = None,
                 microbatches: int = 1):
        """`max_step_s`: stay eager when the last warm-up step took longer (None: always capture)."""
        self.learn = learn
        self.max_step_s = max_step_s
        self.declined = False  # the step is too long to gain from a graph: it stays eager
        self.declined_steps = 0  # eager steps taken since it was declined
        self.reset_grads = reset_grads
        # what the step reads of x (the stage's layout and dtype): made by the copy into the
        # static input on replays, so the batch is not converted into a second buffer first
        self.prepare = prepare
        self.device = device
        self.sliced = microbatches > 1
        self.eager_steps = 0  # optimizer steps taken in the warm-up
        self.replays: dict[tuple[bool, bool], _Replay] = {}
        self._pool = None

    def __call__(self, x: torch.Tensor, skips: tuple, y: torch.Tensor, share: float = 1.0,
                 micro: int = 0, ends_step: bool = True) -> tuple[torch.Tensor, tuple]:
        """One slice of a step: `micro` its index (0: the step's first), `ends_step` the last."""
        key = (micro == 0, ends_step)
        if self.declined:
            return self._declined(x, skips, y, share, ends_step)
        if not self.replays and (self.eager_steps < WARMUP_STEPS or micro > 0):  # whole steps warm up
            self.eager_steps += ends_step
            if ends_step and self.eager_steps == WARMUP_STEPS and self.max_step_s is not None:
                return self._timed_warm_up(self.prepare(x), skips, y, share)
            return self._warm_up(self.prepare(x), skips, y, share, ends_step)
        inputs = [x, *skips, y]
        replay = self.replays.get(key) or self._capture(key, inputs, share)
        if _signature(inputs, share) != replay.signature:
            return self._eager(self.prepare(x), skips, y, share, key)
        for static, fresh in zip(replay.inputs, inputs):
            static.copy_(fresh)  # converts x's dtype and layout as prepare() does
        replay.graph.replay()
        out_x, out_skips = replay.outputs
        return out_x.clone(), tuple(s.clone() for s in out_skips)

    def _warm_up(self, x, skips, y, share, ends_step=True):
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        for t in (x, *skips, y):
            t.record_stream(side)  # read there: not to be reused before the side stream is done
        with torch.cuda.stream(side):
            out_x, out_skips = self.learn(x, skips, y, share, ends_step)
            if ends_step:  # sliced: the last warm-up's gradients stay, zeroed, for the graphs
                self.reset_grads(not (self.sliced and self.eager_steps == WARMUP_STEPS))
        current.wait_stream(side)
        for t in (out_x, *out_skips):
            t.record_stream(current)
        return out_x, out_skips

    def _timed_warm_up(self, x, skips, y, share):
        """The last warm-up slice, timed (two host syncs, once): is a graph worth it?"""
        synchronize(self.device)
        start = time.perf_counter()
        out = self._warm_up(x, skips, y, share)
        synchronize(self.device)
        self.declined = time.perf_counter() - start > self.max_step_s
        return out

    def _declined(self, x, skips, y, share, ends_step):
        """An eager step; at RETIME_AFTER's counts timed again (whole steps), and captured from
        the next step on where it is short after all."""
        self.declined_steps += ends_step
        retime = ends_step and not self.sliced and self.declined_steps in RETIME_AFTER
        if retime:
            synchronize(self.device)
            start = time.perf_counter()
        out = self.learn(self.prepare(x), skips, y, share, ends_step)
        if ends_step:
            self.reset_grads(True)
        if retime:
            synchronize(self.device)
            self.declined = time.perf_counter() - start > self.max_step_s
        return out

    def _eager(self, x, skips, y, share, key):
        # The gradients are the graphs' tensors: a step's first slice zeroes them so that this
        # backward starts from nothing, and they stay there for the next replay.
        starts, ends_step = key
        if starts:
            self.reset_grads(False)
        return self.learn(x, skips, y, share, ends_step)

    def _capture(self, key: tuple[bool, bool], inputs: list[torch.Tensor], share: float) -> _Replay:
        starts, ends_step = key
        x = self.prepare(inputs[0])
        # clone keeps the memory format
        static = [x if x is not inputs[0] else x.clone(), *(t.clone() for t in inputs[1:])]
        x, *skips, y = static
        if not self.sliced:
            self.reset_grads(True)  # the captured backward then allocates (= overwrites) them
        graph = torch.cuda.CUDAGraph()
        with _CAPTURE_LOCK, torch.cuda.device(self.device):
            # thread_local: other stage threads and NCCL's watchdog may use CUDA meanwhile
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                if self.sliced and starts:
                    self.reset_grads(False)  # zeroed in place, inside the graph
                outputs = self.learn(x, tuple(skips), y, share, ends_step)
        self._pool = graph.pool()
        self.replays[key] = _Replay(graph, static, outputs, _signature(inputs, share))
        return self.replays[key]

    def release(self) -> None:
        """Drop the graphs and their memory. A graph that captured NCCL collectives holds their
        communicator: destroying the process group while it lives blocks forever (seen on 4 x
        H200: replicated stages finished training and never exited)."""
        if not self.replays:
            return
        torch.cuda.synchronize(self.device)
        for replay in self.replays.values():
            replay.graph.reset()
        self.replays, self._pool = {}, None
