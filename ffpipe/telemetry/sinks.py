"""Live metrics, as a run goes: each stage writes its rows at every log step, and the last stage
every evaluation, to the loggers of run.loggers, through the libraries' own clients.

  tensorboard  torch.utils.tensorboard.SummaryWriter, event files in <run>/tensorboard/stage-<k>
               (`tensorboard --logdir <run>/tensorboard`); with run.storage, written on this
               machine and copied to the store every 30 s and at the end
  wandb        wandb.init(mode="offline") in <run>/wandb, one W&B run per stage grouped by the
               run's name (`wandb sync <run>/wandb/offline-run-*` uploads them)
  mlflow       an MLflow run per stage under the experiment run.experiment (or "ffpipe"), at
               MLFLOW_TRACKING_URI, else MLflow's file store in <run>/mlruns (`mlflow ui
               --backend-store-uri <run>/mlruns`)
'auto' (the default) is TensorBoard where its package is installed, else nothing.

Tags: unit<u>/loss, unit<u>/train_accuracy; stage<k>/images_per_s, share_busy,
share_waiting_recv, share_waiting_send, queue_fill, peak_memory_mib, lr; test/accuracy (the
run's vote), test/accuracy_last, test/accuracy_unit<u>, val/accuracy.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

from ffpipe.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
STAGE_KEYS = ("images_per_s", "share_busy", "share_waiting_recv", "share_waiting_send", "queue_fill",
              "peak_memory_mib", "lr")
COPY_EVERY_S = 30.0


def chosen(loggers) -> list[str]:
    """run.loggers as names: 'auto' is TensorBoard where it is installed. A logger asked for by
    name whose package is missing is a ConfigError that says what to install."""
    if loggers == "auto":
        return ["tensorboard"] if _installed("tensorboard") else []
    missing = [name for name in loggers if not _installed(PACKAGES[name])]
    if missing:
        raise ConfigError(f"run.loggers asks for {', '.join(missing)} but its package is not installed: "
                          f"pip install {' '.join(PACKAGES[m] for m in missing)} (or pip install "
                          f"'ffpipe[{','.join(missing)}]'), or leave it out of run.loggers")
    return list(loggers)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def stage_scalars(rows: list[dict]) -> dict[str, float]:
    """A log step's rows (one per unit of one stage) as tagged scalars."""
    stage = rows[0]["stage"]
    out = {f"stage{stage}/{key}": rows[0][key] for key in STAGE_KEYS if rows[0].get(key) is not None}
    for r in rows:
        out[f"unit{r['unit']}/loss"] = r["loss"]
        out[f"unit{r['unit']}/train_accuracy"] = r["accuracy"]
    return out


def eval_scalars(result: dict) -> dict[str, float]:
    """An evaluation's accuracies as tagged scalars."""
    out = {"test/accuracy": result["test_accuracy"], "test/accuracy_last": result["test_accuracy_last"]}
    out.update({f"test/accuracy_unit{u}": a for u, a in enumerate(result["test_accuracy_per_unit"])})
    if result.get("val_accuracy_mean") is not None:
        out["val/accuracy"] = result["val_accuracy_mean"]
    return out


class LiveMetrics:
    """The loggers of one stage process: write(step, scalars) to every one; close() at the end.
    (ffpipe/run/live.py calls write from a thread of its own: TensorBoard and MLflow take 0.5-1.6
    ms per log step of 23 scalars on a CPU core, which the stage's loop never waits for.) A logger
    that fails is named once on stderr and dropped; training goes on."""

    def __init__(self, names: list[str], folder, stage_id: int, run_name: str, config: dict):
        self.sinks = [_open(name, folder, stage_id, run_name, config) for name in names]
        self.stage_id = stage_id

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(step, scalars)
            except Exception as err:  # noqa: BLE001 - a logger never stops the training
                print(f"ffpipe: stage {self.stage_id}: logger {type(sink).__name__.strip('_')} failed and is "
                      f"dropped: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _open(name: str, folder, stage_id: int, run_name: str, config: dict):
    if name == "tensorboard":
        return _TensorBoard(folder, stage_id)
    if name == "wandb":
        return _Wandb(folder, stage_id, run_name, config)
    return _MLflow(folder, stage_id, run_name, config)


class _TensorBoard:
    def __init__(self, folder, stage_id: int):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.name = folder, f"tensorboard/stage-{stage_id}"
        local = folder.store.local_path(self.name)
        self.staging = None if local is not None else Path(tempfile.mkdtemp(prefix="ffpipe-tb-"))
        self.writer = SummaryWriter(log_dir=str(local or self.staging), flush_secs=5)
        self._copied = time.monotonic()

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if self.staging is not None and time.monotonic() - self._copied > COPY_EVERY_S:
            self._copy()

    def _copy(self) -> None:
        """A remote run folder gets the event files whole (they are small)."""
        self.writer.flush()
        for path in self.staging.iterdir():
            self.folder.store.write_bytes(f"{self.name}/{path.name}", path.read_bytes())
        self._copied = time.monotonic()

    def close(self) -> None:
        self.writer.close()
        if self.staging is not None:
            self._copy()


class _Wandb:
    def __init__(self, folder, stage_id: int, run_name: str, config: dict):
        import wandb

        local = folder.store.local_path("")  # W&B keeps its files in <dir>/wandb
        os.environ.setdefault("WANDB_SILENT", "true")  # one stage's log line, not W&B's banner
        self.run = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(local) if local else None,
                              project=config["run"].get("experiment") or "ffpipe", group=run_name,
                              name=f"{run_name}-stage{stage_id}", config=config, reinit="create_new")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, folder, stage_id: int, run_name: str, config: dict):
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow's own usage reports: not ours to send
        local = folder.store.local_path("mlruns")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and local is not None:
            # MLflow's file backend: one folder per run, so every stage process writes its own;
            # MLflow keeps it in maintenance and asks for this to use it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = local.resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        experiment_id = self._experiment(config["run"].get("experiment") or "ffpipe")
        run = self.client.create_run(experiment_id, run_name=f"{run_name}-stage{stage_id}",
                                     tags={"ffpipe.run": run_name, "ffpipe.stage": str(stage_id)})
        self.run_id = run.info.run_id

    def _experiment(self, name: str) -> str:
        """Its id, made by whichever stage comes first (two may try at once)."""
        from mlflow.exceptions import MlflowException

        for _ in range(2):
            found = self.client.get_experiment_by_name(name)
            if found:
                return found.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # another stage made it meanwhile
                continue
        raise RuntimeError(f"MLflow: experiment {name!r} neither found nor made")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag.replace("/", "."), float(value), now, step) for tag, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
