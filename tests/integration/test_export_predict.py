"""`ffpipe export` and `ffpipe predict` on a tiny trained run: each exported file, loaded without
ffpipe, gives load_run's outputs within 1e-4; the CSV of PNG files has load_run.predict's classes."""
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ffpipe
from ffpipe.cli import main
from tests.helpers import make_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("use") / "run"
    ffpipe.train(make_config(f"run.dir={folder}", "train.max_steps=6", "model.name=small_cnn"))
    return folder


def _pixels(n=5, seed=1):
    return torch.rand((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


def test_onnx_export_matches_load_run(run_dir, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", "--run-dir", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _pixels(7)  # another batch size than the export traced
    probs, goodness = session.run(["probabilities", "goodness"], {"pixels": x.numpy()})
    with torch.no_grad():
        want_probs, want_goodness = ffpipe.load_run(run_dir)(x)
    assert goodness.shape == (7, 4, 10)  # small_cnn: 4 units
    torch.testing.assert_close(torch.from_numpy(probs), want_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(goodness), want_goodness, atol=1e-4, rtol=1e-4)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert json.loads(meta["classes"])[3] == "class_3" and json.loads(meta["in_shape"]) == [3, 16, 16]


def test_torchscript_export_matches_load_run(run_dir, tmp_path):
    out = tmp_path / "m.pt"
    assert main(["export", "--run-dir", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    x = _pixels(3)
    with torch.no_grad():
        got, want = module(x), ffpipe.load_run(run_dir)(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert json.loads(json.loads(extra["metadata.json"])["vote"])["vote"] == "mean"


def test_safetensors_export_holds_the_state_and_what_using_it_needs(run_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "m.safetensors"
    assert main(["export", "--run-dir", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 0
    network = ffpipe.load_run(run_dir)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert state.keys() == network.state_dict().keys()
    for name, tensor in network.state_dict().items():
        assert torch.equal(state[name], tensor), name
    assert json.loads(meta["mean"]) == network.mean.flatten().tolist()
    assert json.loads(meta["classes"]) == network.classes and "[model]" in meta["config"]


def test_predict_csv_of_png_files_has_load_run_classes(run_dir, tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    assert main(["predict", "--run-dir", str(run_dir), str(folder)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    want = ffpipe.load_run(run_dir).predict(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert [r["path"] for r in rows] == [str(folder / f"{i}.png") for i in range(6)]
    assert [r["class"] for r in rows] == want.names
    assert [int(r["exit_unit"]) for r in rows] == [3] * 6
    assert [float(r["confidence"]) for r in rows] == pytest.approx(want.confidence.tolist(), abs=1e-6)


def test_predict_resizes_and_converts_other_images(run_dir, tmp_path, capsys):
    """A 40 x 30 grayscale JPEG becomes 3 x 16 x 16 (RGB, shorter side to 16, centre crop)."""
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.full((30, 40), 200, dtype=np.uint8)).save(path)
    out = tmp_path / "p.csv"
    assert main(["predict", "--run-dir", str(run_dir), str(path), "--out", str(out), "--exit-at", "1"]) == 0
    row = next(csv.DictReader(out.open()))
    want = ffpipe.load_run(run_dir).predict(torch.full((1, 3, 16, 16), 200, dtype=torch.uint8), exit_at=1)
    assert row["class"] == want.names[0] and row["exit_unit"] == "1"


@pytest.mark.parametrize("argv, says", [
    (["predict", "--run-dir", "{run}", "{tmp}/missing.png"], "does not exist"),
    (["predict", "--run-dir", "{run}", "{tmp}/bad.png"], "cannot read image"),
    (["predict", "--run-dir", "{tmp}", "{tmp}/bad.png"], "is not a run folder"),
    (["predict", "--run-dir", "{run}", "{tmp}/bad.png", "--exit-at", "9"], "units 0..3"),
])
def test_bad_input_gets_one_line(run_dir, tmp_path, capsys, argv, says):
    (tmp_path / "bad.png").write_text("not an image")
    if says == "units 0..3":
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "bad.png")
    args = [a.format(run=run_dir, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_early_exit_answers_from_the_units_run(run_dir):
    network = ffpipe.load_run(run_dir)
    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        votes = torch.softmax(network(x.float() / 255)[1] / network.learners[0].temperature, dim=2)
    full = network.predict(x)
    assert torch.equal(network.predict(x, exit_at=3).labels, full.labels)
    at_one = network.predict(x, exit_at=1)
    assert torch.equal(at_one.labels, votes[:, :2].mean(dim=1).argmax(dim=1)) and set(at_one.exit_unit.tolist()) == {1}
    first = network.predict(x, min_confidence=0.0)  # everyone answers at once
    assert set(first.exit_unit.tolist()) == {0} and torch.equal(first.labels, votes[:, 0].argmax(dim=1))
    p = float(votes[:, 0].max(dim=1).values.median())
    some = network.predict(x, min_confidence=p)
    early = some.exit_unit == 0
    assert 0 < int(early.sum()) < 40 and bool((some.confidence[early] >= p).all())
    assert torch.equal(some.labels[early], votes[early, 0].argmax(dim=1))
