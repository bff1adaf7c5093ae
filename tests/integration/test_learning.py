"""Real data on the CPU: SFF and BP learn Fashion-MNIST within a bounded number of steps."""
import pytest

from ffpipe.backends import train
from tests.helpers import make_config, needs_fashion

# 2,000 images per class, one pass of 300 steps, one evaluation on the full 10,000 test images.
REAL = ["data.name=fashion_mnist", "data.train_subset=2000", "train.batch_size=64",
        "train.eval_batch_size=1000", "train.epochs=1", "train.max_steps=300", "train.log_every=50",
        "train.optimizer=adam", "train.lr=0.005"]


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("algo, floor", [("sff", 0.72), ("bp", 0.75)])
def test_small_cnn_learns_fashion_mnist(tmp_path, algo, floor):
    cfg = make_config(*REAL, f"algo.name={algo}", "model.name=small_cnn", "model.granularity=block",
                      f"run.dir={tmp_path / 'r'}")
    _, summary = train(cfg)
    assert summary["steps"] == 300
    assert summary["test_accuracy"] >= floor, summary["history"]


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_resnet18_units_all_learn_at_depth_with_finite_losses(tmp_path, granularity):
    """Every unit's loss stays finite and falls over a few dozen real steps (the deep units of a
    plain block-local ResNet18 are where divergence shows first). The run stops after its 40th
    step, before any evaluation: scoring the 10,000 test images took three quarters of its time."""
    import pyarrow.parquet as pq

    cfg = make_config("data.name=fashion_mnist", "data.train_subset=128", "train.batch_size=32",
                      "train.epochs=2", "train.eval_every=2", "run.stop_after_step=40", "train.log_every=1",
                      "model.name=resnet18",
                      f"model.granularity={granularity}", f"run.dir={tmp_path / 'r'}",
                      "train.eval_batch_size=1000")
    run_dir, summary = train(cfg)
    rows = [r for r in pq.read_table(run_dir / "metrics.parquet").to_pylist() if r["phase"] == "train"]
    units = sorted({r["unit"] for r in rows})
    assert len(units) == (9 if granularity == "block" else 17)
    for unit in units:
        losses = [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if r["unit"] == unit]
        assert len(losses) == 40 and all(map(lambda v: v == v and abs(v) < float("inf"), losses)), \
            f"unit {unit}: {losses}"
        first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
        assert last < first, f"unit {unit} did not learn: {first:.3f} -> {last:.3f}"
