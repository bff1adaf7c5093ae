"""train.microbatches, in pieces: the source's row slices, what a message carries of them (the p2p
header too), a stage stepping once per step, the loop logging and saving on step boundaries only,
and the config's refusals."""
from __future__ import annotations

import pytest
import torch

from ffpipe.errors import ConfigError
from ffpipe.learners import build_learners
from ffpipe.pipeline.graphed import plan_graphs
from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.source import DataSource, RunPlan
from ffpipe.pipeline.stage import Stage, StageOptions
from ffpipe.transport.p2p import decode_header, encode_header
from tests.helpers import make_config
from tests.unit.test_runtime import ListBox, StubLoader, StubStage


class RowsLoader(StubLoader):
    """`n` batches of `rows` rows each, row i of batch b holding 100 b + i."""

    def __init__(self, batches, rows):
        super().__init__(batches)
        self.rows = rows

    def batches(self, epoch, start=0):
        for b in range(start, self.n):
            yield torch.arange(self.rows).float()[:, None] + 100 * b, torch.arange(self.rows)


def test_the_source_sends_each_batch_as_even_row_slices_in_order():
    plan = RunPlan(2, 2, num_units=1, num_classes=3)
    source = DataSource(plan, RowsLoader(2, 10), RowsLoader(1, 10), microbatches=4)
    train = [source.recv() for _ in range(8)]
    assert [(m.step, m.micro, m.micros, m.step_rows, len(m.y)) for m in train[:4]] == [
        (0, 0, 4, 10, 3), (0, 1, 4, 10, 3), (0, 2, 4, 10, 2), (0, 3, 4, 10, 2)]
    assert [m.ends_step for m in train] == [False, False, False, True] * 2
    assert torch.equal(torch.cat([m.x for m in train[4:]]), torch.arange(10).float()[:, None] + 100)
    assert source.recv().phase is Phase.EPOCH_END
    evaluation = source.recv()  # evaluation batches stay whole
    assert evaluation.phase is Phase.EVAL and len(evaluation.y) == 10 and evaluation.micros == 1
    few = DataSource(RunPlan(1, 1, 1, 3), RowsLoader(1, 2), RowsLoader(1, 2), microbatches=4)
    assert [(m.micros, len(m.y)) for m in (few.recv(), few.recv())] == [(2, 1), (2, 1)]  # a row each
    assert few.recv().phase is Phase.EPOCH_END


def test_the_p2p_header_carries_the_microbatch():
    msg = Message(Phase.TRAIN, 1, 9, x=torch.zeros(3, 2), y=torch.zeros(3, dtype=torch.long),
                  micro=2, micros=4, step_rows=10)
    base, _ = decode_header(encode_header(msg))
    assert (base.step, base.micro, base.micros, base.step_rows, base.ends_step) == (9, 2, 4, 10, False)


def _micro(step, micro, micros=2):
    return Message(Phase.TRAIN, 0, step, x=torch.zeros(1, 1), y=torch.zeros(1, dtype=torch.long),
                   micro=micro, micros=micros, step_rows=micros)


class MicroStubStage(StubStage):
    def train_step(self, msg):
        self.trained.append((msg.step, msg.micro))
        self.step += msg.ends_step
        self.pending_steps += msg.ends_step
        return msg


def test_the_loop_logs_and_saves_after_a_steps_last_microbatch_only():
    stream = [_micro(s, m) for s in range(4) for m in range(2)] + [control(Phase.END, 0, 4)]
    stage, saves, logs = MicroStubStage(), [], []
    loop = LoopConfig(log_every=2, checkpoint_every=3, save=lambda logger, epoch: saves.append(logger.stage.step),
                      on_log=lambda stage_id, step, rows: logs.append(step))
    run_stage_loop(stage, ListBox(stream), ListBox(), loop)
    assert len(stage.trained) == 8 and logs == [2, 4] and saves == [3, 4]


def _stage(cfg):
    learners = build_learners(cfg, (3, 16, 16), 10)
    return Stage(0, learners, StageOptions.of(cfg), total_steps=10, device=torch.device("cpu"))


def test_a_stage_steps_its_optimizer_once_per_step_and_reports_the_batch_mean_loss():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    whole = _stage(make_config("model.name=mlp", "model.granularity=layer", "train.optimizer=sgd"))
    split = _stage(make_config("model.name=mlp", "model.granularity=layer", "train.optimizer=sgd", "train.microbatches=3"))
    whole.train_step(Message(Phase.TRAIN, 0, 0, x=x, y=y))
    before = [p.clone() for p in split.learners.parameters()]
    parts = list(zip(x.tensor_split(3), y.tensor_split(3)))
    for i, (xi, yi) in enumerate(parts):
        if i == 2:  # nothing has moved before the last microbatch
            assert all(torch.equal(a, b) for a, b in zip(before, split.learners.parameters()))
        split.train_step(Message(Phase.TRAIN, 0, 0, x=xi, y=yi, micro=i, micros=3, step_rows=8))
    assert split.step == whole.step == 1 and split.pending_steps == 1
    for a, b in zip(whole.learners.parameters(), split.learners.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for a, b in zip(whole.read_stats(), split.read_stats()):
        assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_microbatches_refuse_replicas_classic_ff_and_more_slices_than_rows_and_are_graphed():
    with pytest.raises(ConfigError, match="train.microbatches.*pipeline.replicas"):
        make_config("train.microbatches=2", "pipeline.backend=torchrun", "pipeline.stages=2",
                    "pipeline.replicas=[2, 1]")
    with pytest.raises(ConfigError, match="train.microbatches.*algo.name = 'ff'"):
        make_config("train.microbatches=2", "algo.name=ff", "model.name=mlp", "model.granularity=layer")
    with pytest.raises(ConfigError, match="'train.microbatches' must be between 1 and train.batch_size"):
        make_config("train.microbatches=33")
    for setting in ("on", "auto"):  # a graph per kind of slice (tests/gpu/test_step_gpu.py)
        plan = plan_graphs(setting, torch.device("cuda"), microbatches=2)
        assert plan.capture and plan.microbatches == 2
    assert not plan_graphs("auto", torch.device("cpu"), microbatches=2).capture
