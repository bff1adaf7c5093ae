"""The sections of the run configuration: one dataclass per TOML table, each key a field with its
documentation and allowed values, each section validating its own keys (ffpipe/config.py loads
and merges them, and checks what spans sections)."""
from __future__ import annotations

from dataclasses import dataclass

from ffpipe.config_data import DATASETS, PREPARE_INPUTS, DataConfig  # noqa: F401 - one place to import sections from
from ffpipe.config_fields import _f, _require
from ffpipe.errors import ConfigError

# Every model a user may name, with the granularities it can be cut into (ffpipe/models builds them).
MODEL_GRANULARITIES = {
    **{name: ("layer", "block", "stage") for name in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
        "mobilenet_v3_small", "mobilenet_v3_large", "small_cnn")},
    "mlp": ("layer",),
}
MODELS = tuple(MODEL_GRANULARITIES)
LOGGERS = ("tensorboard", "wandb", "mlflow")  # run.loggers (ffpipe/telemetry/sinks.py)


@dataclass
class ModelConfig:
    name: str = _f("small_cnn", "architecture, or a function of yours: 'package.module:function' "
                   "returning its units (README, Bring your own)", MODELS, plugin=True)
    granularity: str = _f("block", "unit size: 'layer' = pure FF (every conv+norm+act a unit), "
                          "'block' = hybrid (backprop inside each residual block), 'stage' = one unit "
                          "per resolution stage (fewer, larger units; greedy local learning's remedy)",
                          ("layer", "block", "stage"))
    width: int = _f(0, "base width of small_cnn / hidden width of mlp (0 = model default)")
    depth: int = _f(0, "number of hidden layers of mlp (0 = model default)")
    head_kernel: int = _f(1, "kernel size of the auxiliary goodness convolution (odd)")
    dropout: float = _f(0.0, "dropout on every unit's output while training (channels of maps); "
                        "BP gets the same")

    def validate(self):
        allowed = MODEL_GRANULARITIES.get(self.name, ("layer", "block", "stage"))  # a plug-in: its own
        if self.granularity not in allowed:
            raise ConfigError(f"model '{self.name}' has no '{self.granularity}' granularity; "
                              f"set model.granularity to one of: {', '.join(allowed)}")
        _require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1) (0 = off)")
        _require(self.width >= 0, "model.width", "must be >= 0")
        _require(self.depth >= 0, "model.depth", "must be >= 0")
        _require(self.head_kernel >= 1 and self.head_kernel % 2 == 1,
                 "model.head_kernel", "must be an odd number >= 1 (1, 3, 5, ...)")


@dataclass
class AlgoConfig:
    name: str = _f("sff", "'sff' local goodness losses, 'bp' end-to-end backprop, "
                   "'ff' classic Forward-Forward (mlp only)", ("sff", "bp", "ff"))
    margin: float = _f(1.0, "sff: margin m added to every wrong class's goodness")
    temperature: float = _f(1.0, "sff: temperature tau dividing goodness in the softmax")
    # Default: the paper's. Its loss rewards a unit for growing its activations; with SGD at a
    # high lr that runs away in deep units (non-finite at step 10, ResNet18, SGD 0.05), with AdamW
    # (the default optimizer: bounded steps) it did not in any run. The two scale-free variants
    # below remove the incentive altogether, at some accuracy (docs/results.md).
    goodness: str = _f("mean_square", "sff: 'mean_square' (paper: mean over HxW of squares), "
                       "'log_mean_square' (its log) or 'normalized_mean_square' (divided by its "
                       "mean over classes); both are unchanged when a unit scales its output",
                       ("mean_square", "log_mean_square", "normalized_mean_square"))
    head: str = _f("conv1x1", "sff: goodness head: 'conv1x1' (paper: the projection at full resolution) "
                   "or 'pooled' (average-pooled to head_pool x head_pool first: cheaper with many "
                   "classes or large maps)", ("conv1x1", "pooled"))
    head_pool: int = _f(4, "sff, head = 'pooled': side of the pooled map")
    head_depth: int = _f(0, "sff, head = 'pooled': conv3x3+BN+ReLU layers on the pooled map before "
                         "the projection (DGL's auxiliary network)")
    head_schedule: str = _f("constant", "head_depth on every unit, or 'decreasing' from head_depth "
                            "at the first unit to 0 at the last", ("constant", "decreasing"))
    aux: str = _f("none", "sff: an information-keeping term beside each unit's class loss: "
                  "'similarity' (PredSim: the batch's cosine-similarity matrix of the unit's features "
                  "matches its labels'), 'reconstruction' (InfoPro-like: a decoder rebuilds the unit's "
                  "input)", ("none", "similarity", "reconstruction"))
    aux_weight: float = _f(1.0, "sff: weight of algo.aux beside the class loss")
    vote: str = _f("mean", "sff: the network's prediction: 'mean' (paper: mean of every unit's "
                   "softmax), 'last' unit, 'best_range' (the contiguous units whose mean is best on "
                   "the validation split, each evaluation), 'weighted' (each unit's softmax weighted "
                   "by its validation accuracy, SAMME's log-odds)", ("mean", "last", "best_range", "weighted"))
    deep_supervision: bool = _f(False, "bp: a goodness head on every unit, their SFF losses added to "
                                "the classifier's (one end-to-end backward): BP as strong FF methods "
                                "are judged against")
    grad_clip: float = _f(0.0, "clip each unit's gradient norm to this (0 = off)")
    ff_threshold: float = _f(2.0, "ff: goodness threshold of the logistic loss")

    def validate(self):
        _require(self.margin >= 0, "algo.margin", "must be >= 0")
        _require(self.temperature > 0, "algo.temperature", "must be > 0")
        _require(self.grad_clip >= 0, "algo.grad_clip", "must be >= 0 (0 turns clipping off)")
        _require(self.head_pool >= 1, "algo.head_pool", "must be >= 1 (the pooled map's side)")
        _require(self.head_depth >= 0, "algo.head_depth", "must be >= 0")
        _require(self.head_depth == 0 or self.head == "pooled", "algo.head_depth",
                 "needs algo.head = 'pooled' (its layers run on the pooled map)")
        _require(self.aux_weight >= 0, "algo.aux_weight", "must be >= 0")


@dataclass
class TrainConfig:
    epochs: int = _f(1, "passes over the training set")
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = no limit)")
    batch_size: int = _f(128, "training minibatch size")
    microbatches: int = _f(1, "each training batch crosses the pipeline as this many row slices "
                           "(sizes differ by one at most), each unit summing its gradients over "
                           "them before its one optimizer step: a stage holds one slice's activations")
    eval_batch_size: int = _f(512, "evaluation minibatch size")
    lr: float = _f(0.002, "peak learning rate")
    optimizer: str = _f("adamw", "optimizer (sgd uses momentum)", ("sgd", "adam", "adamw"))
    momentum: float = _f(0.9, "sgd momentum")
    weight_decay: float = _f(5e-4, "weight decay")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up", ("cosine", "constant"))
    warmup_fraction: float = _f(0.05, "share of the steps spent warming the lr up linearly")
    seed: int = _f(0, "seed of weights, data order and augmentation")
    device: str = _f("auto", "where to train", ("auto", "cpu", "cuda"))
    precision: str = _f("auto", "'auto' = bf16 autocast on GPU, fp32 on CPU", ("auto", "fp32", "bf16"))
    channels_last: bool = _f(True, "use channels_last memory format on GPU")
    deterministic: bool = _f(False, "deterministic kernels (bit-identical reruns; slower on GPU)")
    drop_last: bool = _f(True, "drop each epoch's last partial training batch, so that every step "
                         "has one shape; false: train on it too (eagerly where the step is graphed)")
    cuda_graphs: str = _f("auto", "replay each stage's training step as one CUDA graph (a replicated "
                          "stage's NCCL collectives included; with train.microbatches, one graph per "
                          "kind of slice): 'auto' = on CUDA devices, except a step "
                          "that takes over 0.5 s (it gains nothing and the graph's memory pool costs "
                          "room; a batch of another shape, such as a last partial one, runs "
                          "eagerly), 'on' = insist "
                          "(an error on CPU), 'off' = eager", ("auto", "on", "off"))
    log_every: int = _f(50, "read metrics from the device every N steps")
    eval_every: int = _f(1, "evaluate on the test split every N epochs (and after the last)")
    init_from: str = _f("", "a run folder whose trained unit bodies start this run (transfer); "
                        "heads and the BP classifier start afresh")
    freeze_bodies: bool = _f(False, "train only the goodness heads / BP classifier on frozen unit "
                             "bodies (a linear probe); needs train.init_from")

    def validate(self):
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(self.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = no limit)")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(1 <= self.microbatches <= self.batch_size, "train.microbatches",
                 f"must be between 1 and train.batch_size ({self.batch_size})")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(0 <= self.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(self.eval_every >= 1, "train.eval_every", "must be >= 1")
        _require(not self.freeze_bodies or self.init_from, "train.freeze_bodies",
                 "needs train.init_from (a run folder to take the frozen bodies from)")


@dataclass
class PipelineConfig:
    backend: str = _f("local", "how stages are started", ("local", "torchrun", "ray"))
    stages: int = _f(1, "number of pipeline stages (consecutive units each)")
    boundaries: list = _f(list, "explicit first unit of every stage after the first "
                          "(e.g. [3, 6]); empty = balance by measured cost")
    replicas: list = _f(list, "copies of each stage, each on its own GPU/process with a shard of "
                        "every batch (e.g. [2, 1, 1, 1]); 'auto' = fill the processes "
                        "(torchrun) or GPUs (Ray) by measured cost; [] = one each", also=("auto",))
    queue_depth: int = _f(2, "batches in flight between two stages")
    transport: str = _f("p2p", "between stages: torch.distributed point-to-point or Ray",
                        ("p2p", "ray"))
    timeout_s: float = _f(300.0, "a stage waiting longer than this on a neighbour (or on its GPU "
                          "behind a neighbour's transfer) stops the run")
    max_restarts: int = _f(3, "ray and torchrun (launch/torchrun.sh): after a stage fails, restart "
                           "every stage from the newest checkpoint they all have, up to this many "
                           "times; the same failure twice in a row is not restarted; local runs "
                           "do not restart")
    ray_tensor_transport: str = _f("auto", "ray transport: how tensors move between actors ('auto' = "
                                   "Ray Direct Transport over NCCL on GPUs, the object store on CPUs)",
                                   ("auto", "object_store", "nccl", "gloo"))
    address: str = _f("", "ray: cluster to join ('' = start a local one on 127.0.0.1; "
                      "'auto' = the cluster of RAY_ADDRESS or the local head)")
    placement: str = _f("STRICT_PACK", "ray: placement-group strategy for the stage actors",
                        ("STRICT_PACK", "PACK", "SPREAD"))
    cpus_per_stage: float = _f(1.0, "ray: CPUs reserved for each stage actor")
    dashboard: bool = _f(True, "ray: a local cluster ffpipe starts runs Ray's dashboard on 127.0.0.1 "
                         "(port 8265, or the next free one; its address is printed)")
    elastic: bool = _f(True, "ray: when a restart finds fewer GPUs/CPU slots than the layout needs (a "
                       "lost node), go on with what is left, units re-partitioned over fewer replicas "
                       "or stages (what is learned is the same); the next restart uses capacity that "
                       "came back. false: the restart waits pipeline.timeout_s for the full layout")

    def validate(self):
        _require(self.stages >= 1, "pipeline.stages", "must be >= 1")
        _require(self.queue_depth >= 1, "pipeline.queue_depth", "must be >= 1")
        _require(self.timeout_s > 0, "pipeline.timeout_s", "must be > 0")
        _require(self.cpus_per_stage > 0, "pipeline.cpus_per_stage", "must be > 0")
        _require(self.max_restarts >= 0, "pipeline.max_restarts", "must be >= 0 (0 = never restart)")
        r = self.replicas
        if isinstance(r, list) and r and self.stages == 1:
            self.stages = len(r)  # pipeline.stages left at 1: as many stages as replica counts
        if r != "auto":
            _require(all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in r),
                     "pipeline.replicas", f"must be 'auto' or a list of counts >= 1, got {r!r}")
            _require(not r or len(r) == self.stages, "pipeline.replicas",
                     f"needs one count per stage (pipeline.stages = {self.stages}), got {len(r)}")
        if self.replicas == "auto" or any(v > 1 for v in r):
            _require(self.backend != "local", "pipeline.replicas",
                     "needs several processes: use pipeline.backend = 'torchrun' or 'ray'")
            _require(not (self.backend == "ray" and self.transport == "ray"), "pipeline.replicas",
                     "needs pipeline.transport = 'p2p' on Ray (replicas exchange shards directly)")
        b = self.boundaries
        _require(all(isinstance(v, int) and v > 0 for v in b) and b == sorted(set(b)),
                 "pipeline.boundaries", "must be increasing unit indices > 0")
        _require(not b or len(b) == self.stages - 1, "pipeline.boundaries",
                 f"needs stages - 1 = {self.stages - 1} entries, got {len(b)}")


@dataclass
class RunConfig:
    dir: str = _f("", "run folder ('' = runs/<timestamp>); with run.storage, the run's name in it")
    storage: str = _f("", "where run folders are kept: '' = this machine (run.dir); or a folder or URI "
                      "every node reaches (file:///shared/runs, s3://bucket/runs, gs://..., hdfs://...): "
                      "checkpoints, metrics and the summary go to <storage>/<run.dir or timestamp>")
    experiment: str = _f("", "name of the experiment this run belongs to (groups runs in reports)")
    plots: bool = _f(True, "write PNG plots of the per-unit curves")
    progress: bool = _f(True, "show a progress bar on the console")
    checkpoint_every: int = _f(0, "save every stage every N steps (0 = at the end of each epoch)")
    stop_after_step: int = _f(0, "stop (checkpointed) once this many steps are done, to go on "
                              "later with --resume; 0 = train to the end")
    loggers: list = _f("auto", "live metrics of every stage at every log step, and of every evaluation: any of "
                       "tensorboard, wandb (offline), mlflow; 'auto' = tensorboard where it is installed; "
                       "[] = none (the run folder's metric rows are written all the same)", also=("auto",))
    start_over: bool = _f(False, "with --resume: where the run has checkpoints but none is usable "
                          "(damaged, or another model's), train it again from step 0 in the same folder "
                          "(without it the resume stops and says so)")

    def validate(self):
        _require(self.loggers == "auto" or (isinstance(self.loggers, list) and set(self.loggers) <= set(LOGGERS)),
                 "run.loggers", f"must be 'auto' or a list of: {', '.join(LOGGERS)}; got {self.loggers!r}")
        _require(self.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0")
        _require(self.stop_after_step >= 0, "run.stop_after_step", "must be >= 0")
        if self.storage:
            name = self.dir
            _require(not name or ("://" not in name and not name.startswith("/") and ".." not in name.split("/")),
                     "run.dir", f"names the run inside run.storage when that is set (a relative name: 'exp1', "
                     f"'sweep/lr-0.1'), got {name!r}; or leave run.storage empty for a local path")
