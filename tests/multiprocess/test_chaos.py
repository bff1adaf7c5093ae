"""Chaos on torchrun (CPU, seeded): a run of 3 stages under launch/torchrun.sh takes five random
faults (SIGKILL and SIGSTOP of stage processes, a damaged newest checkpoint then a kill), goes on
after each and ends with exactly the parameters of an uninterrupted run. The report of faults and
times to continue is printed (pytest -s) and written beside the run."""

import pytest

from tests.helpers.chaos import RUN as CHAOS_RUN
from tests.helpers.chaos import Chaos
from tests.helpers.machine import processes_with
from tests.helpers.runs import EXACT, launch, sequential_run

pytestmark = pytest.mark.slow

SEED = 2026
CHAOS = EXACT + CHAOS_RUN


def test_torchrun_survives_random_faults_and_ends_bit_for_bit(tmp_path):
    reference = sequential_run(tmp_path / "sequential", CHAOS)
    run_dir = tmp_path / "chaos"
    sets = [a for o in CHAOS + [f"run.dir={run_dir}"] for a in ("--set", o)]
    proc = launch(["bash", "launch/torchrun.sh", "3", *sets])
    chaos = Chaos(run_dir, proc, num_units=7, backend="torchrun", seed=SEED)
    ranks = lambda: [p for r in range(3) for p in processes_with(f"run.dir={run_dir}", env_needle=f"RANK={r}")]  # noqa: E731
    try:
        for kind in chaos.rng.sample(["kill", "kill", "stop", "damage", "kill"], 5):
            chaos.inject(kind, ranks)
        err = chaos.finish()
    finally:
        print(f"\n{chaos.report()}")
        if proc.poll() is None:
            proc.kill()
    chaos.survived(err, reference)
    assert "stopped answering" in err and "is damaged" in err
