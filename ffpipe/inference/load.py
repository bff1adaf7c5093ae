"""load_run: a run folder's newest complete step as a TrainedNetwork, without the training data.

The learners are rebuilt and loaded by run/evaluate.py's trained_learners (what `ffpipe eval`
uses); the input shape, class names and normalisation come from the folder's data.json; the
vote's range or weights (algo.vote = best_range, weighted: chosen on the validation split when
the run was evaluated) from eval.json or the run's history at that step.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.inference.network import Numerics, TrainedNetwork
from ffpipe.inference.votes import VoteRule
from ffpipe.pipeline.stage import autocast_dtype, input_dtype, place_learners
from ffpipe.run.evaluate import trained_learners
from ffpipe.run.folder import RunFolder
from ffpipe.run.setup import setup_process
from ffpipe.run.stage_process import unit_votes


def load_run(run: str | Path, device: str | torch.device = "cpu") -> TrainedNetwork:
    """The whole trained network of the run folder `run` (a path or the storage URI it printed)
    on `device`, in eval mode. On a GPU the process takes the run's numerics (TF32, deterministic
    kernels if the run asked for them), as `ffpipe eval` does."""
    folder = RunFolder.open(run)
    data = folder.data_info()
    if data is None:
        raise FFPipeError(f"{folder} has no data.json (its input shape, class names and normalisation; runs "
                          f"made before ffpipe kept them): run `ffpipe eval --run-dir {folder}` once with the "
                          "run's training data in place (data.root), which writes it")
    cfg = folder.config()
    device = torch.device(device)
    if device.type == "cuda":
        setup_process(cfg)
    learners, step = trained_learners(folder, cfg, in_shape=data["in_shape"], num_classes=len(data["classes"]))
    numerics = numerics_of(cfg, learners[0], device)
    placed = place_learners(learners, device, numerics.channels_last, frozen=False)
    rule = vote_rule(folder, cfg, len(learners), len(data["classes"]), step)
    network = TrainedNetwork(placed, rule, data, numerics, cfg.train.eval_batch_size).to(device)
    network.run_dir, network.step, network.algo = str(folder), step, cfg.algo.name
    return network


def numerics_of(cfg: Config, first_learner: torch.nn.Module, device: torch.device) -> Numerics:
    """How the run's stage would compute on `device` (train.precision, train.channels_last)."""
    return Numerics(autocast_dtype(cfg.train.precision, device),
                    input_dtype(cfg.train.precision, first_learner, device),
                    device.type == "cuda" and cfg.train.channels_last, cfg.algo.name == "ff")


def vote_rule(folder: RunFolder, cfg: Config, num_units: int, num_classes: int, step: int) -> VoteRule:
    """algo.vote as the run's evaluation at `step` applied it."""
    apart = unit_votes(cfg)
    result = None
    if apart:
        evaluated = folder.eval_result()
        if evaluated is not None and evaluated.get("step") == step:
            result = evaluated
        else:
            result = next((r for r in reversed(folder.history(step)) if r["step"] == step), None)
        if result is None and cfg.data.val_fraction > 0:
            raise FFPipeError(f"{folder}: algo.vote = '{cfg.algo.vote}' chooses its units on the validation split "
                              f"when the run is evaluated, and no evaluation of step {step} is recorded; run "
                              f"`ffpipe eval --run-dir {folder}` once (with the run's data in place)")
    return VoteRule.of_run(cfg.algo.vote, num_units, num_classes, apart, result)
