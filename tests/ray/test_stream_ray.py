"""Streamed shards on Ray: two stage actors learn bit for bit what the sequential trainer learns."""
import pytest

from tests.helpers.runs import assert_same_parameters, run_ffpipe, sequential_run
from tests.helpers.streams import shards, stream_run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def test_ray_actors_learn_what_the_sequential_trainer_learns_from_a_stream(tmp_path):
    root = shards(tmp_path)
    ref = sequential_run(tmp_path / "sequential", stream_run(root))
    run_ffpipe(stream_run(root) + [f"run.dir={tmp_path / 'ray'}", "pipeline.backend=ray", "pipeline.stages=2"],
               timeout=300)
    assert_same_parameters(ref, tmp_path / "ray")
