"""The shipped pipeline itself: a fresh copy runs the default `dvc repro` offline and
reproduces the committed metrics/ byte for byte (issues 3 and 6: CI checks this).

About 100 s on 2 cores: the one e2e test on the real params rather than the tiny ones.
"""

import shutil

from .conftest import PROJECT, Repo, project_files

EXPERIMENTS = {"mnist_twolayernet", "mnist_mlp", "mnist_cnn", "iris_mlp", "linreg_line5", "linreg_line10"}


def test_default_repro_reproduces_the_committed_metrics(tmp_path):
    for rel in project_files():
        if not rel.startswith("tests/"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / rel, tmp_path / rel)
    repo = Repo(tmp_path)
    # The committed metrics were made with torch's default thread count for this machine kind;
    # a different count changes float summation order, so do not pin it to one thread here.
    repo.env.pop("OMP_NUM_THREADS")
    repo.git("init", "-q", "-b", "main")
    repo.commit("the shipped project")
    tracked = repo.git("ls-files", "metrics").stdout.split()
    for rel in tracked:  # every metrics file must be written anew, not skipped as up to date
        (tmp_path / rel).unlink()

    output = repo.dvc("repro").output
    assert {f"train@{e}" for e in EXPERIMENTS} <= repo.ran(output)
    shown = repo.dvc_json("metrics", "show")
    files = next(iter(shown.values()))["data"]
    assert {f"metrics/{e}.json" for e in EXPERIMENTS} == set(files)
    assert all("accuracy" in files[f"metrics/{e}.json"]["data"] for e in EXPERIMENTS if not e.startswith("linreg"))
    assert all("mse" in files[f"metrics/{e}.json"]["data"] for e in EXPERIMENTS if e.startswith("linreg"))
    assert repo.git("status", "--porcelain", "metrics").stdout == ""  # byte for byte as committed
    assert repo.dvc_json("metrics", "diff") == {}
