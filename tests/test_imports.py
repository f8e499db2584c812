"""Start-up cost: each stage imports only what it uses.

`import torch` alone takes 1.7 s and 500 MB on the CI machine kind, scikit-learn 1.2 s, and a
cold `dvc repro` starts over 30 stage processes. Each stage below runs for real, as
`python stages/X.py` in a tiny project, and reports which heavy packages it loaded.
"""

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_params_dict

HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "pandas", "dvclive")

# stage arguments -> the heavy packages it must not import
STAGES = {
    ("validate", "logs/params.ok"): {"torchvision", "sklearn", "matplotlib", "dvclive"},
    ("download", "digits"): {"torch", "torchvision", "matplotlib", "dvclive"},
    ("download", "line"): {"torch", "torchvision", "sklearn", "matplotlib", "dvclive"},
    ("normalize", "digits"): {"torch", "torchvision", "matplotlib", "dvclive"},  # scikit-learn loads pandas
    ("normalize", "line"): {"torch", "torchvision", "sklearn", "matplotlib", "dvclive"},
    ("train", "digits_mlp"): {"torchvision", "sklearn", "matplotlib"},
    ("train", "line_linear"): {"torchvision", "sklearn", "matplotlib"},
    ("evaluate", "digits_mlp"): {"torchvision", "sklearn", "matplotlib"},
    ("evaluate", "line_linear"): {"torchvision", "sklearn", "matplotlib"},
    ("plot", "digits_mlp"): {"torch", "torchvision", "sklearn", "dvclive"},
    ("plot", "--activations", "act.png"): {"torch", "torchvision", "sklearn", "dvclive"},
    ("report",): {"torch", "torchvision", "sklearn", "dvclive"},
}

# Runs the stage script as `python stages/X.py` would, then prints the heavy modules loaded.
PROBE = """
import runpy, sys
script, heavy = sys.argv[1], sys.argv[2].split(",")
sys.argv = sys.argv[3:]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
print("loaded:" + ",".join(m for m in heavy if m in sys.modules))
"""


def tiny_project(root, raw: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data/csv").mkdir(parents=True, exist_ok=True)
    (root / "data/csv/line.csv").write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10)))


def heavy_imports(root, *args: str) -> set[str]:
    """Run `python stages/<args[0]>.py args[1:]` in root; the heavy packages it loaded."""
    script = str(ROOT / "stages" / f"{args[0]}.py")
    command = [sys.executable, "-c", PROBE, script, ",".join(HEAVY), script, *args[1:]]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    return set(filter(None, line.removeprefix("loaded:").split(",")))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[tuple, set[str]]:
    """Run every stage of a tiny project once, in dependency order, and record its imports."""
    root = tmp_path_factory.mktemp("project")
    tiny_project(root, tiny_params_dict())
    return {args: heavy_imports(root, *args) for args in STAGES}  # in order: each leaves what the next reads


@pytest.mark.parametrize("args", list(STAGES), ids=" ".join)
def test_stage_does_not_import_what_it_does_not_use(loaded, args):
    assert not loaded[args] & STAGES[args]


def test_the_training_stages_do_import_torch(loaded):
    # The probe sees real imports: the stages that need torch and dvclive report them. Evaluate
    # writes its one metrics file itself: opening dvclive would cost it a second.
    assert {"torch", "dvclive"} <= loaded[("train", "digits_mlp")]
    assert "torch" in loaded[("evaluate", "digits_mlp")] and "dvclive" not in loaded[("evaluate", "digits_mlp")]


def test_validate_checks_more_epochs_without_torch(tmp_path):
    """validate remembers the torch checks that passed by what they read (validate.py): run
    again, or with one more epoch, it does not import torch; with another learning rate it does."""
    raw = tiny_params_dict()
    train = raw["experiments"]["digits_mlp"]["train"]

    def validate_loads_torch() -> bool:
        tiny_project(tmp_path, raw)
        return "torch" in heavy_imports(tmp_path, "validate", "logs/params.ok")

    assert validate_loads_torch()  # nothing remembered yet
    assert not validate_loads_torch()
    train["epochs"] += 1
    assert not validate_loads_torch()
    train["lr"] = 0.5
    assert validate_loads_torch()
