"""`ffpipe export`: a trained run as one file that loads without ffpipe.

- safetensors: the state dict of the whole network (every unit and head; BP's classifier; the
  normalisation's mean and std as `mean`, `std`), with in its metadata (strings, JSON where a
  value is a list): ffpipe_format, classes, in_shape, mean, std, vote (the rule and its range or
  weights), algo, input, step, and the run's config.toml, from which ffpipe rebuilds the modules;
- onnx, torchscript: the whole network, input `pixels` (N x C x H x W float32 pixel values in
  [0, 1], i.e. uint8 / 255: the normalisation is inside), outputs `probabilities` (N x classes,
  the run's vote) and `goodness` (N x units x classes; a BP run's logits as its one unit). The
  ONNX file carries the same metadata (metadata_props); the TorchScript file as extra files
  (`metadata.json`). Both are traced on the CPU in fp32 and checked against the network.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ffpipe.errors import FFPipeError
from ffpipe.inference.load import load_run
from ffpipe.inference.network import TrainedNetwork

FORMATS = ("safetensors", "onnx", "torchscript")
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}
INPUT = "pixels: N x C x H x W float32 in [0, 1] (uint8 / 255); normalised inside with mean and std"
TOLERANCE = 1e-4


def export_run(run: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's network in `fmt` to `out` (default: <run>/export/model.<suffix>)."""
    if fmt not in FORMATS:
        raise FFPipeError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    network = load_run(run, "cpu")
    out = Path(out) if out else _default_out(network, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    {"safetensors": _safetensors, "onnx": _onnx, "torchscript": _torchscript}[fmt](network, out)
    return out


def _default_out(network: TrainedNetwork, fmt: str) -> Path:
    if "://" in network.run_dir:
        raise FFPipeError(f"{network.run_dir} is in storage; give --out FILE, a local path")
    return Path(network.run_dir) / "export" / f"model{SUFFIXES[fmt]}"


def metadata(network: TrainedNetwork) -> dict[str, str]:
    """What a user of the file needs besides the weights, as strings (safetensors' metadata)."""
    from ffpipe.run.folder import RunFolder
    return {"ffpipe_format": "1", "classes": json.dumps(network.classes),
            "in_shape": json.dumps(list(network.in_shape)), "mean": json.dumps(network.mean.flatten().tolist()),
            "std": json.dumps(network.std.flatten().tolist()), "vote": json.dumps(network.rule.describe()),
            "algo": network.algo, "input": INPUT, "step": str(network.step),
            "config": RunFolder(network.run_dir).store.read_text("config.toml")}


def _safetensors(network: TrainedNetwork, out: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous() for name, t in network.state_dict().items()}
    save_file(tensors, str(out), metadata=metadata(network))


def _example(network: TrainedNetwork, batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, *network.in_shape), generator=torch.Generator().manual_seed(0))


def _onnx(network: TrainedNetwork, out: Path) -> None:
    import onnx

    example = _example(network)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(network, (example,), str(out), input_names=["pixels"],
                      output_names=["probabilities", "goodness"], dynamic_shapes=({0: batch},),
                      external_data=False, dynamo=True)
    model = onnx.load(str(out))
    for key, value in metadata(network).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    check_onnx(network, out)


def check_onnx(network: TrainedNetwork, path: Path, batch: int = 3) -> float:
    """The largest difference between onnxruntime's outputs and the network's (raises past 1e-4)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _example(network, batch)
    got = session.run(["probabilities", "goodness"], {"pixels": x.numpy()})
    return _compare(network, x, [torch.from_numpy(g) for g in got], "onnxruntime")


def _torchscript(network: TrainedNetwork, out: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated upstream (FutureWarning), and the tracer warns that the number
        # of classes is taken as a constant, which for one network it is
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, (_example(network),), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={"metadata.json": json.dumps(metadata(network))})
        x = _example(network, 3)
        _compare(network, x, list(torch.jit.load(str(out))(x)), "the TorchScript module")


def _compare(network: TrainedNetwork, x: torch.Tensor, got: list[torch.Tensor], what: str) -> float:
    with torch.no_grad():
        want = network(x)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want))
    if worst > TOLERANCE:
        raise FFPipeError(f"{what} differs from the network by {worst:.2e} (more than {TOLERANCE}); "
                          "the export is wrong: please report it")
    return worst
