"""torchrun as users call it: the backend follows from torchrun's environment (or a conflict is
named), and launch/torchrun.sh passes torchrun's own options on, for one node or several."""
import pytest

from ffpipe import cli
from ffpipe.backends import torchrun_launch
from ffpipe.backends.torchrun_env import backend_sets, torchrun_world
from ffpipe.errors import ConfigError, FFPipeError

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "none"}


def test_torchrun_is_recognised_by_its_environment():
    assert torchrun_world({}) is None
    assert torchrun_world({"RANK": "0", "WORLD_SIZE": "2"}) is None  # not a launcher's process
    assert torchrun_world(TORCHRUN) == 2
    assert torchrun_world({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}) == 3


def test_the_backend_follows_from_torchrun_unless_one_is_asked_for():
    assert backend_sets(None, {}) == [] and backend_sets("ray", {}) == []
    assert backend_sets(None, TORCHRUN) == ["pipeline.backend=torchrun"]
    assert backend_sets("torchrun", TORCHRUN) == []
    assert backend_sets("local", {**TORCHRUN, "WORLD_SIZE": "1"}) == []  # one process: as asked
    with pytest.raises(ConfigError, match=r"^torchrun started 2 processes but pipeline.backend = 'ray': each "
                                          r"would train a run of its own; leave pipeline.backend out"):
        backend_sets("ray", TORCHRUN)


def test_ffpipe_train_under_torchrun_takes_its_backend(tmp_path, monkeypatch, capsys):
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    args = cli._parser().parse_args(["train", "--set", "data.name=synthetic"])
    cfg = cli._train_config(args)
    assert cfg.pipeline.backend == "torchrun" and cfg.pipeline.stages == 1  # the ranks make it WORLD_SIZE
    config = tmp_path / "c.toml"
    config.write_text('[pipeline]\nbackend = "local"\n')
    assert cli.main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "but pipeline.backend = 'local'" in err


def test_one_node_runs_standalone_and_the_launcher_restarts():
    launch = torchrun_launch._parse(["2", "--config", "c.toml", "--set", "train.epochs=1"])
    assert launch.torchrun == [] and not launch.multinode and not launch.torchrun_restarts
    assert launch.train_args == ["--config", "c.toml", "--set", "train.epochs=1"]
    assert torchrun_launch.torchrun_command(launch, ["--set", "pipeline.stages=2"], launch.train_args, 3) == [
        "--nproc-per-node=2", "--standalone", "--max-restarts=0", "-m", "ffpipe", "train",
        "--set", "pipeline.stages=2", "--config", "c.toml", "--set", "train.epochs=1"]


def test_torchrun_options_pass_through_for_several_nodes():
    launch = torchrun_launch._parse(["4", "--nnodes", "2", "--node_rank=1", "--rdzv-backend=c10d",
                                     "--rdzv-endpoint=10.0.0.1:29500", "--rdzv-id", "exp1", "--set", "run.dir=r"])
    assert launch.torchrun == ["--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
                               "--rdzv-endpoint=10.0.0.1:29500", "--rdzv-id=exp1"]
    assert launch.multinode and launch.torchrun_restarts and launch.train_args == ["--set", "run.dir=r"]
    command = torchrun_launch.torchrun_command(launch, [], launch.train_args, 3)
    assert "--standalone" not in command and command[:7] == ["--nproc-per-node=4", *launch.torchrun, "--max-restarts=3"]
    assert torchrun_launch._stage_sets(launch, {}) == ["pipeline.backend=torchrun"]  # the world's processes
    elastic = torchrun_launch._parse(["1", "--nnodes=1:2", "--max-restarts=5"])
    assert elastic.multinode and torchrun_launch.torchrun_command(elastic, [], [], 3).count("--max-restarts=5") == 1


def test_one_node_with_max_restarts_leaves_the_restarts_to_torchrun():
    launch = torchrun_launch._parse(["2", "--max-restarts=2", "--monitor-interval=1"])
    assert not launch.multinode and launch.torchrun_restarts
    assert torchrun_launch.torchrun_command(launch, [], [], 3)[:4] == [
        "--nproc-per-node=2", "--standalone", "--max-restarts=2", "--monitor-interval=1"]


def test_launcher_input_errors_name_what_it_takes(tmp_path, monkeypatch, capsys):
    with pytest.raises(FFPipeError, match=r"unknown arguments \['--nprocs=2'\]; it takes torchrun's --nnodes"):
        torchrun_launch._parse(["2", "--nprocs=2"])
    with pytest.raises(FFPipeError, match="^usage: launch/torchrun.sh PROCESSES_PER_NODE"):
        torchrun_launch._parse(["--nnodes=2"])
    monkeypatch.chdir(tmp_path)
    assert torchrun_launch.main(["2", "--nnodes=2", "--set", "data.name=synthetic"]) == 2
    assert "on several nodes: set run.dir, the same on every node" in capsys.readouterr().err


class _Failure:
    """What torchrun's ChildFailedError holds per rank: exit code, signal and time."""

    def __init__(self, exitcode: int, signal: str, timestamp: int):
        self.exitcode, self.signal, self.timestamp = exitcode, signal, timestamp

    def signal_name(self) -> str:
        return self.signal


class _ChildFailed:
    def __init__(self, failures: dict):
        self.failures = failures

    def get_first_failure(self):
        rank = min(self.failures, key=lambda r: self.failures[r].timestamp)
        return rank, self.failures[rank]


def test_a_stopped_rank_its_neighbour_named_is_the_culprit_though_another_was_killed_first(tmp_path):
    """A SIGSTOPped rank is killed by torchrun at the end, and a rank stuck in a transfer with it
    may be killed a moment earlier; the neighbour's report names the stopped one (a CI chaos run
    once named the other "died without a report")."""
    from ffpipe.backends import torchrun_launch as launch
    from ffpipe.run.folder import RunFolder
    from ffpipe.run.recovery import Attempt

    folder = RunFolder(str(tmp_path))
    folder.record_failure(0, 9, "NeighbourError: stage 1 (rank 1) sent nothing for 8 s while this stage "
                          "waited for an acknowledgement (pipeline.timeout_s)", 1, secondary=True, silent_rank=1)
    folder.record_failure(0, 3, "NeighbourError: stage 2 (rank 2) sent nothing for 8 s", 0,
                          silent_rank=2)  # another attempt
    err = _ChildFailed({0: _Failure(-15, "SIGTERM", 5), 1: _Failure(-9, "SIGKILL", 20), 2: _Failure(-9, "SIGKILL", 10)})
    assert launch._culprit(err)[0] == 2  # no word from the neighbours: the first killed
    silent = launch._silent_ranks(folder, Attempt(1, 0))
    assert silent == {1}
    rank, failure = launch._culprit(err, silent)
    assert rank == 1
    assert "rank 1) stopped answering" in launch._unreported(rank, failure, silent)
    assert "rank 2) died without a report" in launch._unreported(2, err.failures[2], silent)
    # the stopped rank ended by the agent's SIGTERM once it ran again, after the other's SIGKILL
    err.failures[1] = _Failure(-15, "SIGTERM", 20)
    assert launch._culprit(err)[0] == 2 and launch._culprit(err, silent)[0] == 1


def test_a_silent_neighbour_is_recorded_by_rank_across_processes(tmp_path):
    """The rank a stage heard nothing from travels as a field, not as words of the message: it
    survives pickling (Ray) and lands in failures.jsonl, where the launcher reads it."""
    import pickle

    from ffpipe.backends import torchrun_launch as launch
    from ffpipe.errors import NeighbourError
    from ffpipe.run import recovery
    from ffpipe.run.folder import RunFolder

    silent = pickle.loads(pickle.dumps(NeighbourError("stage 1 (rank 3) sent nothing for 8 s", silent_rank=3)))
    assert silent.silent_rank == 3 and str(silent) == "stage 1 (rank 3) sent nothing for 8 s"
    failed = pickle.loads(pickle.dumps(recovery.StageFailed.of(0, 9, silent)))
    assert failed.silent_rank == 3 and failed.secondary and failed.step == 9
    folder = RunFolder(str(tmp_path))
    assert recovery.record(folder, failed, 1)["silent_rank"] == 3
    lost = recovery.StageFailed.of(2, 9, NeighbourError("lost stage 1 (rank 1) while waiting for a batch"))
    assert "silent_rank" not in recovery.record(folder, lost, 1)  # died, not silent
    recovery.record(folder, recovery.StageFailed.of(0, 4, silent), 0)  # an earlier attempt
    assert launch._silent_ranks(folder, recovery.Attempt(1, 0)) == {3}
    assert launch._silent_ranks(folder, recovery.Attempt(2, 0)) == set()
