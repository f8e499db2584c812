"""The shipped pipeline itself: a clone of what is committed runs the default `dvc repro`
offline, reproduces the committed metrics/ byte for byte and leaves `git status` clean,
dvc.lock included: no output depends on the host or on the run's timing.

It clones the commit, not the working tree: a `make repro` that has just rewritten metrics/
must not be what the rerun is compared with. The metrics were made under `determinism:
portable`, so this holds on every x86-64 host with AVX2 or AVX-512, Intel or AMD, whatever
its core count. The run starts when the tests are collected
(conftest.py) and is checked here, last.
"""

import yaml

from .conftest import DEFAULT_PIPELINE


def test_default_repro_reproduces_the_committed_metrics(request):
    background = request.config.stash[DEFAULT_PIPELINE]
    output = background.result(timeout_s=3000)
    repo = background.repo
    experiments = yaml.safe_load((repo / "params.yaml").read_text())["experiments"]
    assert {f"train@{e}" for e in experiments} <= repo.ran(output)
    tracked = set(repo.git("ls-files", "metrics").stdout.split())
    assert {f"metrics/{e}/evaluate/metrics.json" for e in experiments} <= tracked
    assert repo.git("status", "--porcelain", "metrics").stdout == ""  # byte for byte as committed
    assert repo.git("status", "--porcelain").stdout == ""  # dvc.lock too: every output as recorded
    assert repo.dvc_json("metrics", "diff") == {}
