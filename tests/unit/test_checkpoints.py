"""Checkpoints keyed by unit: a stage's state moves to any other layout bit for bit, retention never
loses the newest complete step, a damaged file (a flipped bit, a file cut short) is named and the
step before taken, a foreign checkpoint is named by unit and shape, a full disk by path and free
space, and run folders of the earlier per-stage layout still read."""
import copy
import errno
import pickle

import pytest
import torch

from ffpipe.errors import CheckpointError, FFPipeError, StorageError
from ffpipe.learners import build_learners
from ffpipe.pipeline.messages import Message, Phase
from ffpipe.pipeline.stage import Stage, StageOptions
from ffpipe.pipeline.stage_state import check_fits
from ffpipe.run.checkpoints import Saved, complete_steps, read_units, resume_step, save_units, saved, unusable
from ffpipe.run.folder import RunFolder
from ffpipe.run.legacy import read_units as read_legacy
from tests.helpers import make_config
from tests.helpers.chaos import flip_tensor_bytes

BATCHES = [(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(i))) for i in range(6)]


def _learners(*overrides):
    cfg = make_config("model.name=small_cnn", "model.granularity=layer", "train.optimizer=adamw", *overrides)
    return cfg, build_learners(cfg, (3, 16, 16), 10)


def _train(stages, batches):
    for x, y in batches:
        msg = Message(Phase.TRAIN, 0, 0, x=x, y=y)
        for stage in stages:
            msg = stage.train_step(msg)


def _stages(cfg, learners, starts):
    ends = [*starts[1:], len(learners)]
    return [Stage(k, copy.deepcopy(learners[a:b]), StageOptions.of(cfg), 20, torch.device("cpu"))
            for k, (a, b) in enumerate(zip(starts, ends))]


def test_a_stages_units_resume_on_another_layout_bit_for_bit():
    cfg, learners = _learners()
    whole = _stages(cfg, learners, [0])
    _train(whole, BATCHES)
    saved_at_3 = _stages(cfg, learners, [0, 4])  # trained 3 steps as two stages, then saved
    _train(saved_at_3, BATCHES[:3])
    units = {u: s for stage in saved_at_3 for u, s in copy.deepcopy(stage.state_dict())["units"].items()}
    resumed = _stages(cfg, learners, [0, 2, 5])  # ... and resumed as three
    for stage in resumed:
        stage.load_state_dict({"step": 3, "units": {u: units[u] for u in stage.unit_ids}})
    _train(resumed, BATCHES[3:])
    mine = [p for s in resumed for p in s.learners.parameters()]
    theirs = list(whole[0].learners.parameters())
    assert len(mine) == len(theirs) > 0 and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert resumed[1].step == 6 and int(resumed[1].meter.step_t) == 6


def _folder(tmp_path) -> RunFolder:
    folder = RunFolder.create(make_config(f"run.dir={tmp_path / 'run'}"))
    folder.write_partition([0, 2])
    return folder


def _units(units, step):
    return {u: {"learner": {"w": torch.full((3,), float(step + u))}, "optimizer": {}} for u in units}


def test_retention_keeps_the_two_newest_complete_steps_whatever_the_pace(tmp_path):
    folder = _folder(tmp_path)
    steps = lambda: [(f.step, f.first) for f in saved(folder)]  # noqa: E731
    for step in (2, 4, 6, 8):  # stage 0 (units 0-1) runs ahead of stage 1 (units 2-3)
        save_units(folder, step, 0, _units([0, 1], step), num_units=4)
    save_units(folder, 2, 0, _units([2, 3], 2), num_units=4)
    assert steps() == [(2, 0), (2, 2), (4, 0), (6, 0), (8, 0)]
    assert resume_step(folder, 4) == 2  # nothing newer is complete: nothing of step 2 was dropped
    for step in (6, 8):  # stage 1 catches up
        save_units(folder, step, 0, _units([2, 3], step), num_units=4)
    assert steps() == [(2, 0), (4, 0), (6, 0), (6, 2), (8, 0), (8, 2)]  # each drops only its own
    save_units(folder, 10, 0, _units([0, 1], 10), num_units=4)
    assert steps() == [(6, 0), (6, 2), (8, 0), (8, 2), (10, 0)]
    assert resume_step(folder, 4) == 8 and complete_steps(saved(folder), 4).keys() == {6, 8}
    units = read_units(folder, 8, [1, 2])
    assert units.keys() == {1, 2} and [units[u]["learner"]["w"].tolist() for u in (1, 2)] == [[9.0] * 3, [10.0] * 3]
    assert not list((folder.path / "checkpoints").glob("*.tmp*"))


def test_a_first_step_saved_only_upstream_is_this_runs_step_in_the_making(tmp_path):
    """Stages 0-1 of 3 saved their units at the first checkpoint and stage 2 failed first: a
    restart (or a resume) starts at 0. Another model's complete step of as many units, in a run
    of 7 units whose plan says otherwise, is still named as another model's."""
    folder = _folder(tmp_path)
    save_units(folder, 4, 0, _units([0, 1, 2, 3], 4), num_units=7)
    folder.write_plan(8, 4, 7)
    assert resume_step(folder, 7) is None and unusable(folder, 7) is None
    folder.write_plan(8, 4, 4)  # the folder's run had 4 units: its step 4 is whole, for another model
    assert "this model has 7: they are another model's" in unusable(folder, 7)


def test_a_flipped_bit_or_a_file_cut_short_is_named_and_the_step_before_taken(tmp_path, capsys):
    folder = _folder(tmp_path)
    for step in (4, 8):
        for units in ([0, 1], [2, 3]):
            save_units(folder, step, 0, {u: {"learner": {"w": torch.randn(1000)}, "optimizer": {}}
                                         for u in units}, num_units=4)
    newest = folder.path / Saved(8, 2, 3).name
    flip_tensor_bytes(newest)
    torch.load(newest, weights_only=True)  # torch itself loads the damaged file without a word
    assert resume_step(folder, 4) == 4  # the retention kept it for this
    assert f"checkpoint {folder}/{Saved(8, 2, 3).name} is damaged" in capsys.readouterr().err
    older = folder.path / Saved(4, 0, 1).name
    older.write_bytes(older.read_bytes()[:100])  # cut short, as by a full disk
    assert resume_step(folder, 4) is None


def test_a_checkpoint_holding_code_is_refused_with_its_name(tmp_path):
    folder = _folder(tmp_path)
    path = folder.path / Saved(10, 0, 3).name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a "checkpoint" that would run code
        pickle.dump({"step": 10, "hook": print}, f)
    assert resume_step(folder, 4) is None
    with pytest.raises(FFPipeError, match=r"step-000000010-units-0000-0003.pt cannot be read"):
        read_units(folder, 10, [0])


def test_a_foreign_checkpoint_is_named_by_unit_and_shape():
    _, small = _learners("model.width=8")
    _, wide = _learners("model.width=16")
    with pytest.raises(CheckpointError, match=r"unit 1 at step 6 does not fit this model: body\.\S*weight is "
                                              r"\[8, 8, 3, 3\] there and \[16, 16, 3, 3\] here"):
        check_fits(1, small[1].state_dict(), wide[1].state_dict(), 6)
    with pytest.raises(CheckpointError, match="it has no head"):
        check_fits(1, {k: v for k, v in small[1].state_dict().items() if not k.startswith("head")},
                   small[1].state_dict(), 6)


def test_a_full_disk_names_the_path_and_the_free_space(tmp_path, monkeypatch):
    folder = _folder(tmp_path)

    def full(name, fill):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder.store.__class__, "write", lambda self, name, fill: full(name, fill))
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*step-000000002-units-0000-0001.pt: "
                                           r".*No space left on device.* MiB free of .* GiB on its disk; "
                                           r"make room .* ffpipe train --resume"):
        save_units(folder, 2, 0, _units([0, 1], 2), num_units=4)


def test_a_run_folder_of_the_per_stage_layout_reads_in_the_unit_keyed_form(tmp_path):
    cfg, learners = _learners()
    stages = _stages(cfg, learners, [0, 3])
    _train(stages, BATCHES[:2])
    folder = _folder(tmp_path)
    for k, stage in enumerate(stages):  # what stages wrote before: one file each, optimizer by index
        optimizer = stage.optimizer.state_dict()
        if k == 1:  # older still: one parameter group per unit
            sizes = [sum(p.requires_grad for p in learner.parameters()) for learner in stage.learners]
            flat = optimizer["param_groups"][0]
            optimizer["param_groups"] = [{**flat, "params": flat["params"][sum(sizes[:i]):sum(sizes[:i + 1])]}
                                         for i in range(len(sizes))]
        legacy = {"learners": stage.learners.state_dict(), "optimizer": optimizer, "step": 2,
                  "unit_ids": stage.unit_ids, "stage_id": k, "epoch": 0}
        folder.store.write(f"checkpoints/stage-{k}/step-{2:09d}.pt", lambda f, r=legacy: torch.save(r, f))
    assert resume_step(folder, len(learners)) == 2
    names = lambda u: [n for n, _ in learners[u].named_parameters()]  # noqa: E731
    units = read_legacy(folder, 2, range(len(learners)), names)
    for stage in stages:
        for unit, state in stage.state_dict()["units"].items():
            assert state["learner"].keys() == units[unit]["learner"].keys()
            assert all(torch.equal(v, units[unit]["learner"][k]) for k, v in state["learner"].items())
            assert state["optimizer"].keys() == units[unit]["optimizer"].keys()
            for name, moments in state["optimizer"].items():
                assert all(torch.equal(v, units[unit]["optimizer"][name][k]) for k, v in moments.items())
