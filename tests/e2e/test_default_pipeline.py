"""The shipped pipeline itself: a clone of what is committed runs the default `dvc repro`
offline and reproduces the committed metrics/ byte for byte.

It clones the commit, not the working tree: a `make repro` that has just rewritten metrics/
must not be what the rerun is compared with. The metrics were made under `determinism:
portable`, so this holds on every x86-64 host with AVX2 or AVX-512, whatever its core count.
"""

import subprocess

import yaml

from .conftest import PROJECT, Repo, dvc_env


def test_default_repro_reproduces_the_committed_metrics(tmp_path):
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(tmp_path / "clone")], check=True, env=dvc_env())
    repo = Repo(tmp_path / "clone")
    repo.env.pop("OMP_NUM_THREADS")  # the host's own thread count: portable mode must not care
    experiments = yaml.safe_load((repo / "params.yaml").read_text())["experiments"]
    tracked = repo.git("ls-files", "metrics").stdout.split()
    assert {f"metrics/{e}/evaluate/metrics.json" for e in experiments} <= set(tracked)
    for rel in tracked:  # every metrics file must be written anew, not skipped as up to date
        (repo / rel).unlink()

    output = repo.dvc("repro").output
    assert {f"train@{e}" for e in experiments} <= repo.ran(output)
    assert repo.git("status", "--porcelain", "metrics").stdout == ""  # byte for byte as committed
    assert repo.dvc_json("metrics", "diff") == {}
