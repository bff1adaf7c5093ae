"""The stage loop, the data source's message order and the evaluation sink, with stubs: no model,
no data, no process."""
from __future__ import annotations

import torch

from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.pipeline.runtime import LoopConfig, run_stage_loop
from ffpipe.pipeline.sink import EvalSink
from ffpipe.pipeline.source import DataSource, RunPlan


class StubStage:
    """What run_stage_loop needs of a Stage, counting what it is asked to do."""
    stage_id, device, lr, gpu_busy_s = 0, torch.device("cpu"), 0.1, None

    def __init__(self):
        self.step, self.trained, self.evaluated, self.reads = 0, [], [], 0
        self.pending_steps = 0

    def train_step(self, msg):
        self.trained.append(msg.step)
        self.step += 1
        self.pending_steps += 1
        return msg

    def eval_step(self, msg):
        self.evaluated.append(msg.step)
        return msg

    def read_stats(self):
        self.reads += 1
        self.pending_steps = 0
        return [{"unit": 0, "loss": 1.0, "accuracy": 0.5}]

    def sync(self, what=""):
        pass


class ListBox:
    def __init__(self, messages=()):
        self.messages = list(messages)

    def recv(self):
        return self.messages.pop(0)

    def send(self, msg):
        self.messages.append(msg)


def _train(epoch, step):
    return Message(Phase.TRAIN, epoch, step, x=torch.zeros(2, 1), y=torch.zeros(2, dtype=torch.long))


def test_the_loop_trains_logs_saves_and_passes_every_message_on_in_order():
    stream = [_train(0, s) for s in range(5)] + [control(Phase.EPOCH_END, 0, 5), control(Phase.END, 0, 5)]
    stage, outbox, saves, logs = StubStage(), ListBox(), [], []
    loop = LoopConfig(log_every=2, checkpoint_every=3, save=lambda logger, epoch: saves.append(logger.stage.step),
                      on_log=lambda stage_id, step, rows: logs.append(step))
    run_stage_loop(stage, ListBox(stream), outbox, loop)
    assert stage.trained == [0, 1, 2, 3, 4]
    assert [(m.phase, m.step) for m in outbox.messages] == [(m.phase, m.step) for m in stream]
    assert saves == [3, 5, 5]       # every 3 steps, then at the epoch's end and at the stream's end
    assert logs == [2, 4, 5]        # every 2 steps, and the rest of the epoch at its end


def _plan(steps_per_epoch=3, epochs=2):
    return RunPlan(steps_per_epoch, steps_per_epoch * epochs, num_units=2, num_classes=3)


class StubLoader:
    def __init__(self, batches):
        self.n = batches

    def batches(self, epoch, start=0):
        for b in range(start, self.n):
            yield torch.full((2, 1), float(epoch * 100 + b)), torch.zeros(2, dtype=torch.long)


def _phases(source, limit=50):
    out = []
    while len(out) < limit:
        msg = source.recv()
        out.append((msg.phase.name, msg.epoch, msg.step))
        if msg.phase is Phase.END:
            return out
    raise AssertionError("no END")


def test_the_source_streams_each_epoch_then_its_evaluation_then_the_end():
    got = _phases(DataSource(_plan(), StubLoader(3), StubLoader(2), eval_every=2))
    assert got == [("TRAIN", 0, 0), ("TRAIN", 0, 1), ("TRAIN", 0, 2), ("EPOCH_END", 0, 3),
                   ("TRAIN", 1, 3), ("TRAIN", 1, 4), ("TRAIN", 1, 5), ("EPOCH_END", 1, 6),
                   ("EVAL", 1, 0), ("EVAL", 1, 1), ("EVAL_END", 1, 6), ("END", 1, 6)]


def test_a_resumed_source_starts_mid_epoch_and_a_stop_point_ends_the_stream():
    resumed = _phases(DataSource(_plan(), StubLoader(3), StubLoader(1), start_step=4))
    assert resumed[:3] == [("TRAIN", 1, 4), ("TRAIN", 1, 5), ("EPOCH_END", 1, 6)]
    stopped = _phases(DataSource(_plan(), StubLoader(3), StubLoader(1), stop_after_step=2))
    assert stopped == [("TRAIN", 0, 0), ("TRAIN", 0, 1), ("END", 0, 2)]
    passed = _phases(DataSource(_plan(), StubLoader(3), StubLoader(1), start_step=4, stop_after_step=2))
    assert passed[-1] == ("END", 1, 6)  # a stop point already behind a resumed run: to the end


def test_the_sink_turns_votes_and_unit_counts_into_accuracies():
    results = []
    sink = EvalSink(num_units=2, on_result=results.append)
    y = torch.tensor([0, 1, 2, 2])
    votes = torch.eye(3)[torch.tensor([0, 1, 0, 2])]  # three of four right
    sink.send(Message(Phase.EVAL, 0, 0, y=y, votes=votes, unit_correct=torch.tensor([4, 2])))
    sink.send(Message(Phase.EVAL, 0, 1, y=y, votes=votes, unit_correct=torch.tensor([0, 2])))
    sink.send(control(Phase.EVAL_END, 0, 9))
    sink.send(control(Phase.END, 0, 9))
    assert results == [{"epoch": 0, "step": 9, "test_accuracy": 0.75, "test_accuracy_last": 0.5,
                        "test_accuracy_per_unit": [0.5, 0.5], "test_images": 8, "vote": "mean",
                        "test_accuracy_mean": 0.75}]
    assert sink.finished
