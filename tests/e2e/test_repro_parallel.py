"""scripts/repro_parallel.py (`make repro-parallel`): several `dvc repro` processes side by side
leave what one `dvc repro` leaves, byte for byte."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_a_fresh_clone_reproduced_in_parallel_matches_the_sequential_run(reproduced, tmp_path):
    clone = reproduced.clone(tmp_path / "clone")  # no outputs, no DVC cache
    for rel in clone.git("ls-files", "metrics").stdout.split():  # every stage must write anew
        (clone / rel).unlink()
    output = clone.python("scripts/repro_parallel.py", "--jobs", "2").output
    assert "[train@iris_mlp evaluate@iris_mlp plot@iris_mlp]" in output, output

    assert (clone / "dvc.lock").read_bytes() == (reproduced / "dvc.lock").read_bytes()
    assert clone.git("status", "--porcelain").stdout == ""  # metrics/ as committed
    assert clone.dvc_json("status") == {}
    for rel in ("models/iris_mlp/model.pt", "predictions/iris_mlp.csv", "plots/iris_mlp", "reports/summary.md"):
        if (reproduced / rel).is_dir():
            assert sorted(p.name for p in (clone / rel).rglob("*")) == sorted(
                p.name for p in (reproduced / rel).rglob("*")
            )
        else:
            assert clone.digest(rel) == reproduced.digest(rel), rel
