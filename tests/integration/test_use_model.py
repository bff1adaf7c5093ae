"""A trained run used without its training data (ffpipe/inference): load_run reproduces
`ffpipe eval`'s test accuracy to the last digit once the data is gone, for SFF's votes and for
BP; a folder from before data.json says how to get it."""
import json
import shutil

import pytest
import torch

import ffpipe
from ffpipe.data.sources import load_source
from ffpipe.errors import FFPipeError
from ffpipe.run.evaluate import evaluate
from tests.helpers import FASHION_DIR, make_config, needs_fashion
from tests.helpers.datasets import write_idx

TINY_FASHION = ["data.name=fashion_mnist", "data.train_subset=30", "train.batch_size=50", "train.max_steps=4",
                "train.eval_batch_size=1000", "model.name=small_cnn"]


TEST_IMAGES = 2_000  # of Fashion-MNIST's 10,000: each pass over them costs 2 s instead of 10


def _train_then_hide_data(tmp_path, *overrides):
    """A tiny run on a private copy of Fashion-MNIST (its test split cut to the first TEST_IMAGES),
    evaluated; then the copy is deleted. Returns (run folder, eval's result, the test images and
    labels read before the data went)."""
    root = tmp_path / "fashion"
    shutil.copytree(FASHION_DIR, root)
    test = load_source(make_config("data.name=fashion_mnist", f"data.root={FASHION_DIR}").data).test
    write_idx(root / "t10k-images-idx3-ubyte.gz", test.images[:TEST_IMAGES, 0].numpy())
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test.labels[:TEST_IMAGES].numpy())
    cfg = make_config(*TINY_FASHION, f"data.root={root}", f"run.dir={tmp_path / 'run'}", *overrides)
    summary = ffpipe.train(cfg)
    result = evaluate(summary["run_dir"])
    test = load_source(cfg.data).test
    shutil.rmtree(root)
    return summary["run_dir"], result, test


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["algo.vote=mean"], ["algo.name=bp"], ["algo.vote=weighted", "data.val_fraction=0.1"]],
    ids=["sff-mean", "bp", "sff-weighted"])  # last and best_range: tests/unit/test_vote_rule.py
def test_load_run_reproduces_eval_without_the_training_data(tmp_path, overrides):
    run_dir, result, test = _train_then_hide_data(tmp_path, *overrides)
    assert result["test_images"] == TEST_IMAGES
    network = ffpipe.load_run(run_dir)
    found = network.predict(test.images)
    correct = int((found.labels == test.labels).sum())
    assert correct / len(test.labels) == result["test_accuracy"]
    assert network.classes[0] == "T-shirt/top" and network.in_shape == (1, 28, 28)
    if overrides == ["algo.vote=mean"]:  # each unit on its own, as eval counted it: its goodness's argmax
        with torch.no_grad():
            goodness = torch.cat([network(test.images[i:i + 1000].float() / 255)[1] for i in range(0, TEST_IMAGES, 1000)])
        per_unit = (goodness.argmax(dim=2) == test.labels[:, None]).sum(dim=0)
        assert per_unit.tolist() == [round(a * TEST_IMAGES) for a in result["test_accuracy_per_unit"]]
        assert len(network.predict(test.images[:0]).labels) == 0


def test_a_folder_from_before_data_json_says_how_to_get_it(tmp_path):
    cfg = make_config(f"run.dir={tmp_path / 'run'}", "train.max_steps=2")
    run_dir = ffpipe.train(cfg)["run_dir"]
    (tmp_path / "run" / "data.json").unlink()
    with pytest.raises(FFPipeError, match=r"no data.json .*`ffpipe eval --run-dir .*` once"):
        ffpipe.load_run(run_dir)
    evaluate(run_dir)  # with the data in place, eval writes it
    assert ffpipe.load_run(run_dir).classes == [f"class_{c}" for c in range(10)]


def test_eval_and_load_run_use_the_saved_normalisation(tmp_path):
    """data.json's mean and std are what eval and load_run normalise with, not the data's own:
    with a std of 1e6 every image looks alike, so both answer one class for all of them."""
    cfg = make_config(f"run.dir={tmp_path / 'run'}", "train.max_steps=2")
    run_dir = ffpipe.train(cfg)["run_dir"]
    info_path = tmp_path / "run" / "data.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "mean": [0.0] * 3, "std": [1e6] * 3}))
    result = evaluate(run_dir)
    test = load_source(cfg.data).test
    found = ffpipe.load_run(run_dir).predict(test.images)
    assert len(set(found.labels.tolist())) == 1
    assert int((found.labels == test.labels).sum()) / len(test.labels) == result["test_accuracy"]


def test_train_api_takes_keywords_and_dotted_dicts(tmp_path):
    base = make_config().to_dict()
    summary = ffpipe.train(base, {"train.max_steps": 2}, run__dir=str(tmp_path / "a"), train__seed=3)
    assert summary["steps"] == 2 and summary["run_dir"] == str(tmp_path / "a")
    assert "seed = 3" in (tmp_path / "a" / "config.toml").read_text()
    with pytest.raises(FFPipeError, match="section__key"):
        ffpipe.train(base, batch_size=64)
    with pytest.raises(FFPipeError, match="train.batch_sise"):
        ffpipe.train(base, {"train.batch_sise": 64})
