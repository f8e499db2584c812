from pathlib import Path

import numpy as np
import pytest

from torchrepro import download as datasets
from torchrepro.core.errors import DataError, ParamsError
from torchrepro.core.params import Named as Source
from torchrepro.core.params import parse_params
from torchrepro.download.sources import SOURCES, image_table, read_csv_table


def write_csv(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def read_bad(path, features=("x",), target="y", task="regression") -> str:
    with pytest.raises(DataError) as info:
        read_csv_table(path, list(features), target, task)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


# --- CSV ---------------------------------------------------------------------


def test_good_regression_csv(tmp_path):
    path = write_csv(tmp_path, "x, z ,y\n1,10,2.5\n2, 20 ,-3\n3,30,1e2\n")
    table = read_csv_table(path, ["x", "z"], "y", "regression")
    np.testing.assert_array_equal(table.x, [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(table.y, [2.5, -3.0, 100.0])
    assert table.x.dtype == np.float64 and table.y.dtype == np.float64
    assert table.feature_names == ["x", "z"] and table.target_name == "y"
    assert table.task == "regression" and table.kind == "tabular" and table.classes == []


def test_feature_order_follows_params_not_the_file(tmp_path):
    path = write_csv(tmp_path, "b,a,y\n1,2,0\n")
    assert read_csv_table(path, ["a", "b"], "y", "regression").x.tolist() == [[2.0, 1.0]]


def test_classification_labels_are_strings(tmp_path):
    path = write_csv(tmp_path, "x,species\n1,virginica\n2,setosa\n3, versicolor\n4,setosa\n")
    table = read_csv_table(path, ["x"], "species", "classification")
    assert table.classes == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(table.y, [2, 0, 1, 0])
    assert table.y.dtype == np.int64


def test_numeric_class_labels_sort_as_numbers(tmp_path):
    path = write_csv(tmp_path, "x,label\n1,10\n2,2\n3,1\n")
    table = read_csv_table(path, ["x"], "label", "classification")
    assert table.classes == ["1", "2", "10"]
    np.testing.assert_array_equal(table.y, [2, 1, 0])


def test_missing_file(tmp_path):
    assert "CSV file not found" in read_bad(tmp_path / "nope.csv")


def test_missing_target_column(tmp_path):
    message = read_bad(write_csv(tmp_path, "x,z\n1,2\n"))
    assert "missing column(s) y; the file has: x, z" in message


def test_missing_feature_column(tmp_path):
    message = read_bad(write_csv(tmp_path, "x,y\n1,2\n"), features=("x", "w"))
    assert "missing column(s) w" in message


def test_non_numeric_cell_names_row_and_column(tmp_path):
    # Line 1 is the header, so the second data row is row 3.
    message = read_bad(write_csv(tmp_path, "x,y\n1,2\nabc,3\n"))
    assert "row 3, column 'x': not a number: 'abc'" in message


def test_non_numeric_target(tmp_path):
    assert "row 2, column 'y': not a number: 'two'" in read_bad(write_csv(tmp_path, "x,y\n1,two\n"))


@pytest.mark.parametrize("cell", ["", "  "])
def test_empty_cell(tmp_path, cell):
    message = read_bad(write_csv(tmp_path, f"x,y\n1,2\n2,3\n{cell},4\n"))
    assert "row 4, column 'x': empty cell" in message


def test_empty_class_label(tmp_path):
    path = write_csv(tmp_path, "x,label\n1,a\n2,\n")
    assert "row 3, column 'label': empty cell" in read_bad(path, target="label", task="classification")


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_and_inf_are_rejected(tmp_path, cell):
    message = read_bad(write_csv(tmp_path, f"x,y\n1,2\n{cell},3\n"))
    assert f"row 3, column 'x': '{cell}' is not a finite number" in message


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty file
        b"x,y\n1,2\n1,2,3,4\n",  # a row with more fields than the header
        b"x,y\n\xff\xfe\x00\x81,\x92\n",  # not UTF-8
    ],
)
def test_unreadable_csv(tmp_path, content):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    assert "not a readable CSV file" in read_bad(path)


def test_header_without_rows(tmp_path):
    assert "no data rows" in read_bad(write_csv(tmp_path, "x,y\n"))


def test_a_directory_is_not_a_csv(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    assert "is a folder, not a CSV file" in read_bad(tmp_path / "dir.csv")


# --- Source registry -----------------------------------------------------------


def test_every_registered_source_has_fetch_and_load():
    assert {"csv", "iris", "mnist-5k"} <= set(SOURCES)
    for name, spec in SOURCES.items():
        assert spec.name == name and callable(spec.fetch) and callable(spec.load)


def test_unknown_source_name_lists_the_sources():
    with pytest.raises(ParamsError) as info:
        datasets.resolve_source("d", Source(name="mnist-50k"))
    assert (
        str(info.value) == f"datasets.d.source.name: unknown source 'mnist-50k'; allowed: {', '.join(sorted(SOURCES))}"
    )


def test_unknown_source_option():
    source = Source(name="csv", path="data/csv/a.csv", features=["x"], target="y", task="regression", sep=";")
    with pytest.raises(
        ParamsError,
        match=r"^datasets\.d\.source\.sep: unknown option for source 'csv'; allowed: features, path, target, task$",
    ):
        datasets.resolve_source("d", source)
    with pytest.raises(
        ParamsError, match=r"^datasets\.d\.source\.split: unknown option for source 'iris'; allowed: none$"
    ):
        datasets.resolve_source("d", Source(name="iris", split=0.5))


def test_bad_source_option_values():
    with pytest.raises(ParamsError, match=r"^datasets\.d\.source\.task: .*got 'clustering'"):
        datasets.resolve_source(
            "d", Source(name="csv", path="data/csv/a.csv", features=["x"], target="y", task="clustering")
        )
    with pytest.raises(ParamsError, match=r"^datasets\.d\.source\.features: "):
        datasets.resolve_source(
            "d", Source(name="csv", path="data/csv/a.csv", features="x", target="y", task="regression")
        )
    with pytest.raises(ParamsError, match=r"^datasets\.d\.source\.path: Field required"):
        datasets.resolve_source("d", Source(name="csv", features=["x"], target="y", task="regression"))


def in_project(tmp_path, monkeypatch) -> Path:
    """Run in tmp_path, the project's folder, and return its data/csv folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "csv").mkdir(parents=True)
    return tmp_path / "data" / "csv"


def test_csv_source_fetch_copies_and_load_reads(tmp_path, monkeypatch):
    original = write_csv(in_project(tmp_path, monkeypatch), "x,y\n0,1\n1,3\n", name="line.csv")
    source = Source(name="csv", path="data/csv/line.csv", features=["x"], target="y", task="regression")
    raw_dir = tmp_path / "raw" / "line"
    datasets.fetch("line", source, raw_dir)
    assert (raw_dir / "data.csv").read_bytes() == original.read_bytes()
    original.write_text("x,y\n5,5\n")  # raw data is a copy: later edits need a new download
    table = datasets.load("line", source, raw_dir)
    np.testing.assert_array_equal(table.y, [1.0, 3.0])


def test_failed_fetch_leaves_nothing_behind(tmp_path, monkeypatch):
    write_csv(in_project(tmp_path, monkeypatch), "x,y\n1,oops\n", name="bad.csv")
    source = Source(name="csv", path="data/csv/bad.csv", features=["x"], target="y", task="regression")
    with pytest.raises(DataError, match="not a number"):
        datasets.fetch("bad", source, tmp_path / "raw" / "bad")
    assert not (tmp_path / "raw" / "bad").exists()
    assert list((tmp_path / "raw").iterdir()) == []  # no temporary directory left either


def test_download_stage_function_uses_params_paths(tmp_path, params_dict):
    (tmp_path / "data" / "csv").mkdir(parents=True)
    (tmp_path / "data" / "csv" / "line.csv").write_text("x,y\n0,1\n1,2\n")
    datasets.run(parse_params(params_dict), "line")
    assert (tmp_path / "raw" / "line" / "data.csv").is_file()


@pytest.mark.parametrize(
    "path, says",
    [
        ("/elsewhere/line.csv", "not in data/csv, so DVC would not see its edits"),
        ("line.csv", "not in data/csv"),
        ("data/line.csv", "not in data/csv"),
        ("data/csvx/line.csv", "not in data/csv"),
        ("data/csv/../../line.csv", "not in data/csv"),
        ("data/csv/link.csv", "leads out of data/csv to "),
    ],
)
def test_a_csv_source_must_lie_in_the_folder_dvc_tracks(tmp_path, monkeypatch, path, says):
    """The download stage depends on data/csv: a file anywhere else could change unseen by DVC."""
    folder = in_project(tmp_path, monkeypatch)
    write_csv(tmp_path, "x,y\n0,1\n", name="line.csv")
    (folder / "link.csv").symlink_to(tmp_path / "line.csv")
    source = Source(name="csv", path=path, features=["x"], target="y", task="regression")
    with pytest.raises(ParamsError) as info:
        datasets.fetch("line", source, tmp_path / "raw" / "line")
    message = str(info.value)
    assert message.startswith("datasets.line.source.path: ") and says in message, message
    assert "copy the file into data/csv/" in message and f"(got {path!r})" in message
    assert not (tmp_path / "raw").exists()


def test_a_link_inside_data_csv_is_followed(tmp_path, monkeypatch):
    folder = in_project(tmp_path, monkeypatch)
    write_csv(folder, "x,y\n0,1\n1,3\n", name="line.csv")
    (folder / "also.csv").symlink_to("line.csv")
    source = Source(name="csv", path="data/csv/also.csv", features=["x"], target="y", task="regression")
    datasets.fetch("line", source, tmp_path / "raw" / "line")
    assert (tmp_path / "raw" / "line" / "data.csv").read_text() == "x,y\n0,1\n1,3\n"


def test_iris_source_fetch_and_load(tmp_path):
    source = Source(name="iris")
    datasets.fetch("iris", source, tmp_path / "iris")
    table = datasets.load("iris", source, tmp_path / "iris")
    assert table.x.shape == (150, 4) and table.task == "classification"
    assert table.classes == ["setosa", "versicolor", "virginica"]
    assert np.bincount(table.y).tolist() == [50, 50, 50]
    assert table.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    # The first flower of Fisher's data: 5.1, 3.5, 1.4, 0.2, setosa.
    np.testing.assert_array_equal(table.x[0], [5.1, 3.5, 1.4, 0.2])
    assert table.classes[table.y[0]] == "setosa"


def test_mnist5k_source_fetch_and_load(tmp_path):
    source = Source(name="mnist-5k")
    datasets.fetch("mnist-5k", source, tmp_path / "m")
    table = datasets.load("mnist-5k", source, tmp_path / "m")
    assert table.x.shape == (5000, 28, 28) and table.x.dtype == np.uint8
    assert table.kind == "image" and table.classes == [str(i) for i in range(10)]
    assert np.bincount(table.y, minlength=10).tolist() == [500] * 10
    assert table.x.max() == 255 and table.x.min() == 0


def test_mnist5k_load_before_download(tmp_path):
    with pytest.raises(DataError, match="images.npy: not found; run the download stage first"):
        datasets.load("mnist-5k", Source(name="mnist-5k"), tmp_path)


def test_mnist5k_load_refuses_corrupt_and_wrong_arrays(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((3, 28, 28), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    (tmp_path / "labels.npy").write_bytes((tmp_path / "labels.npy").read_bytes()[:-8])
    with pytest.raises(DataError, match="labels.npy: corrupt or truncated .npy file"):
        datasets.load("m", Source(name="mnist-5k"), tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros(3, np.float32))
    with pytest.raises(DataError, match="labels.npy: expected 1-d int64, found 1-d float32"):
        datasets.load("m", Source(name="mnist-5k"), tmp_path)
    np.save(tmp_path / "labels.npy", np.array([object()] * 3))
    with pytest.raises(DataError, match="labels.npy: corrupt or truncated"):
        datasets.load("m", Source(name="mnist-5k"), tmp_path)  # object arrays would need pickle


def test_image_table_checks_labels(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        image_table(images, np.array([0, 1]), tmp_path)
    with pytest.raises(DataError, match="labels must be 0-9, found 0..10"):
        image_table(images, np.array([0, 1, 10]), tmp_path)
