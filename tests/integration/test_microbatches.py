"""train.microbatches end to end on the local backend: stages as threads equal the sequential
trainer bit for bit (batch norm's running statistics included), a stopped run resumes bit for bit,
and without batch norm M slices learn what the whole batch learns, within fp32 summation order.
(torchrun and Ray: tests/multiprocess/test_torchrun.py, tests/ray/test_ray.py.)"""
import pyarrow.parquet as pq

from ffpipe.backends import train
from ffpipe.run.folder import RunFolder
from tests.helpers import make_config
from tests.helpers.runs import assert_same_parameters

# 30 rows in 4 slices (8, 8, 7, 7): uneven microbatches; small_cnn has batch norms, and at layer
# granularity its skip tensors cross the stage boundary
COMMON = ["model.name=small_cnn", "model.granularity=layer", "train.batch_size=30", "train.microbatches=4",
          "train.deterministic=true", "train.epochs=2", "data.synthetic_train=128"]  # 4 steps an epoch


def test_local_stages_with_microbatches_equal_the_sequential_trainer_bit_for_bit(tmp_path):
    one, first = train(make_config(*COMMON, f"run.dir={tmp_path / 'one'}"))
    two, second = train(make_config(*COMMON, "pipeline.stages=2", "pipeline.boundaries=[2]",
                                    f"run.dir={tmp_path / 'two'}"))
    assert first["steps"] == second["steps"] == 8  # optimizer steps, not microbatches
    assert_same_parameters(one, two)
    assert first["test_accuracy_per_unit"] == second["test_accuracy_per_unit"]
    rows = [r for r in pq.read_table(one / "metrics.parquet").to_pylist() if r["phase"] == "train"]
    assert sorted({r["step"] for r in rows}) == [2, 4, 6, 8]  # train.log_every = 2 steps


def test_a_run_with_microbatches_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path):
    common = [*COMMON, "pipeline.stages=2", "run.checkpoint_every=3"]
    whole, _ = train(make_config(*common, f"run.dir={tmp_path / 'whole'}"))
    split, first = train(make_config(*common, f"run.dir={tmp_path / 'split'}", "run.stop_after_step=5"))
    assert first["steps"] == 5
    _, resumed = train(RunFolder(split).resume_config([]), split)
    assert resumed["completed"] and resumed["steps"] == 8
    assert_same_parameters(whole, split)


def test_without_batch_norm_microbatches_learn_what_the_whole_batch_learns(tmp_path):
    """An MLP (no batch norm): the mean loss over the batch, whichever way it is cut, for SFF
    units and for end-to-end BP (plain gradient accumulation there)."""
    for algo in ("sff", "bp"):
        common = ["model.name=mlp", "model.granularity=layer", f"algo.name={algo}", "train.optimizer=sgd",
                  "train.lr=0.05", "train.batch_size=30", "train.max_steps=4", "train.deterministic=true"]
        whole, _ = train(make_config(*common, f"run.dir={tmp_path / algo / 'whole'}"))
        split, _ = train(make_config(*common, "train.microbatches=4", f"run.dir={tmp_path / algo / 'split'}"))
        assert_same_parameters(whole, split, atol=1e-6)
