"""Real data on the CPU: SFF and BP learn Fashion-MNIST within a bounded number of steps."""
import pytest

from ffpipe.entry import train
from tests.conftest import make_config, needs_fashion

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
