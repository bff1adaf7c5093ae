"""A run folder of the earlier per-stage checkpoint layout (checkpoints/stage-<k>/step-<n>.pt, the
optimizer's state by parameter index) resumes and ends bit for bit where an uninterrupted run
ends, and evaluates: written here from a stopped run's unit-keyed files as those stages wrote them."""
import json
import shutil

import pytest
import torch

from ffpipe.learners import build_learners
from ffpipe.run.checkpoints import read_units
from ffpipe.run.folder import RunFolder
from ffpipe.run.evaluate import evaluate
from tests.helpers.runs import EXACT, assert_same_parameters, run_ffpipe, summary

pytestmark = pytest.mark.slow

RUN = EXACT + ["model.name=small_cnn", "model.granularity=layer", "train.epochs=2", "run.checkpoint_every=2",
               "train.optimizer=adamw", "pipeline.boundaries=[3]", "pipeline.stages=2"]


def _as_earlier_layout(run_dir, step: int) -> None:
    """Replace the run's checkpoints by the per-stage files the earlier layout wrote at `step`."""
    folder = RunFolder.open(run_dir)
    cfg = folder.config()
    learners = build_learners(cfg, tuple(cfg.data.synthetic_shape), cfg.data.synthetic_classes)
    units = read_units(folder, step, range(len(learners)))
    shutil.rmtree(run_dir / "checkpoints")
    starts = folder.partition()
    for k, (first, end) in enumerate(zip(starts, [*starts[1:], len(learners)])):
        ids = list(range(first, end))
        slots = [(u, name) for u in ids for name, _ in learners[u].named_parameters()]
        record = {"learners": {f"{i}.{n}": t for i, u in enumerate(ids) for n, t in units[u]["learner"].items()},
                  "optimizer": {"state": {i: units[u]["optimizer"][n] for i, (u, n) in enumerate(slots)},
                                "param_groups": [{"params": list(range(len(slots))), "lr": 0.0}]},
                  "step": step, "unit_ids": ids, "stage_id": k, "epoch": 0, "last_step_applied": step - 1}
        path = run_dir / "checkpoints" / f"stage-{k}" / f"step-{step:09d}.pt"
        path.parent.mkdir(parents=True)
        torch.save(record, path)
    (run_dir / "partition.json").write_text(json.dumps({"starts": starts}) + "\n")  # as it was: no history


def test_a_run_folder_of_the_per_stage_layout_resumes_and_evaluates_bit_for_bit(tmp_path):
    whole = tmp_path / "whole"
    run_ffpipe(RUN + [f"run.dir={whole}"])
    old = tmp_path / "old"
    run_ffpipe(RUN + [f"run.dir={old}", "run.stop_after_step=6"])
    _as_earlier_layout(old, 6)
    assert evaluate(old)["step"] == 6  # reads the earlier layout as it is
    resumed = run_ffpipe(["pipeline.stages=1", "pipeline.boundaries=[]"], resume=old)  # on another layout, too
    assert "resuming at step 6" in resumed.stderr
    assert_same_parameters(whole, old)
    assert summary(old)["completed"] and summary(old)["num_stages"] == 1
    assert list((old / "checkpoints").glob("step-*-units-*.pt"))  # unit-keyed from step 6 on
