"""dvc.yaml against the code: the paths it declares are the ones params.Paths builds (one place
for paths), and each stage lists as deps every torchrepro module its code imports."""

import ast
import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from torchrepro.core.params import CSV_DIR, parse_params

from conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PACKAGE = ROOT / "src" / "torchrepro"


def resolve(text: str, context: dict) -> str:
    """DVC-style ${a.b} interpolation from `context`."""

    def lookup(match: re.Match) -> str:
        value = context
        for part in match.group(1).split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\$\{([^}]+)\}", lookup, text)


def entries(section: list | None) -> list[str]:
    """The paths of a deps/outs/metrics/plots list, whose items are `path` or `{path: options}`."""
    return [next(iter(item)) if isinstance(item, dict) else item for item in section or []]


def paths_variants() -> list[dict]:
    """The shipped params.yaml, and the same with every root renamed: a path that only matches
    because dvc.yaml hard-codes today's default would fail the second."""
    renamed = copy.deepcopy(PARAMS)
    renamed["paths"] = {name: f"elsewhere/{name}_root" for name in PARAMS["paths"]}
    return [PARAMS, renamed]


def expanded(stage: str, raw: dict) -> list[tuple[str, dict, dict]]:
    """(key, resolved stage body, params item) for each foreach item of a stage."""
    spec = DVC["stages"][stage]
    section = spec["foreach"].strip("${}")
    out = []
    for key, item in raw[section].items():
        context = {"paths": raw["paths"], "key": key, "item": item}
        body = {
            field: [resolve(p, context) for p in entries(spec["do"].get(field))]
            for field in ("deps", "outs", "metrics", "plots")
        }
        out.append((key, body, item))
    return out


@pytest.mark.parametrize("raw", paths_variants(), ids=["shipped", "renamed-roots"])
def test_declared_paths_are_the_ones_params_builds(raw):
    paths = parse_params(raw).paths
    assert DVC["stages"]["download"]["foreach"] == DVC["stages"]["normalize"]["foreach"] == "${datasets}"
    for stage in ("train", "evaluate", "plot"):
        assert DVC["stages"][stage]["foreach"] == "${experiments}"

    for key, body, _ in expanded("download", raw):
        assert body["outs"] == [str(paths.raw_dir(key))]
    for key, body, _ in expanded("normalize", raw):
        assert body["outs"] == [str(paths.processed_dir(key))]
        assert str(paths.raw_dir(key)) in body["deps"]
    for key, body, item in expanded("train", raw):
        live = paths.train_live_dir(key)
        # The log of seconds is no output; the per-epoch rows are plots (an uncached plain
        # output would cost the stage DVC's run-cache), overlaid by the top-level plots.
        assert body["outs"] == [str(paths.model_dir(key))]
        assert body["metrics"] == [str(live / "metrics.json")]
        assert body["plots"] == [str(live / "plots" / "metrics")]
        assert str(paths.processed_dir(item["dataset"])) in body["deps"]
    for key, body, item in expanded("evaluate", raw):
        assert body["metrics"] == [str(paths.evaluate_live_dir(key) / "metrics.json")]
        assert body["outs"] == [str(paths.predictions_file(key))]
        assert {str(paths.model_dir(key)), str(paths.processed_dir(item["dataset"]))} <= set(body["deps"])
    for key, body, item in expanded("plot", raw):
        assert body["plots"] == [str(paths.plots_dir(key))]
        needed = [
            paths.train_live_dir(key) / "plots" / "metrics",
            paths.predictions_file(key),
            paths.evaluate_live_dir(key) / "metrics.json",
            paths.processed_dir(item["dataset"]),
        ]
        assert set(map(str, needed)) <= set(body["deps"])


def curves(raw: dict) -> dict[str, dict]:
    """The top-level plots, resolved: {plot id: its definition}."""
    return {
        plot_id: {**spec, "y": {resolve(path, raw): field for path, field in spec["y"].items()}}
        for item in DVC["plots"]
        for plot_id, spec in item.items()
        if isinstance(spec, dict) and "y" in spec
    }


@pytest.mark.parametrize("raw", paths_variants(), ids=["shipped", "renamed-roots"])
def test_each_experiment_has_one_chart_per_metric_with_train_and_test(raw):
    """An experiment added to params.yaml without its charts fails here, naming what to add."""
    paths, declared = parse_params(raw).paths, curves(raw)
    wanted = {}
    for name, exp in raw["experiments"].items():
        task = raw["datasets"][exp["dataset"]]["source"].get("task", "classification")
        for metric in ("loss", "accuracy") if task == "classification" else ("loss",):
            tsv = paths.train_live_dir(name) / "plots" / "metrics"
            wanted[f"{name}-{metric}"] = {
                "title": f"{name}: {metric}",
                "x": "step",
                "x_label": "epoch",
                "y": {str(tsv / split / f"{metric}.tsv"): metric for split in ("train", "test")},
            }
    assert declared == wanted


def test_every_declared_path_comes_from_params_paths():
    """No artifact path is spelled out in dvc.yaml: only code, the CSV sources, the image folders
    and ${paths.*}."""
    for name, spec in DVC["stages"].items():
        body = spec.get("do", spec)
        for field in ("deps", "outs", "metrics", "plots"):
            for path in entries(body.get(field)):
                assert path.startswith(("${paths.", "stages/", "src/torchrepro/", "data/csv", "data/images")), (
                    name,
                    field,
                    path,
                )
                if field != "deps":
                    assert path.startswith("${paths."), (name, field, path)


def test_the_download_stage_depends_on_the_folder_csv_sources_must_lie_in():
    """A csv source's file must lie in CSV_DIR (sources.py refuses others): DVC sees its edits
    only because the download stage lists that folder as a dep, and the shipped ones lie there."""
    assert CSV_DIR in DVC["stages"]["download"]["do"]["deps"]
    csv_paths = [d["source"]["path"] for d in PARAMS["datasets"].values() if d["source"]["name"] == "csv"]
    assert csv_paths and all(Path(CSV_DIR) in Path(path).parents for path in csv_paths)


def test_no_stage_declares_the_training_logs_and_git_ignores_them():
    """logs/<experiment>.json holds wall-clock seconds: as a dep or an out (or inside a folder
    that is one) it would make dvc.lock differ from run to run and from host to host."""
    for name, spec in DVC["stages"].items():
        body = spec.get("do", spec)
        for field in ("deps", "outs", "metrics", "plots"):
            for path in entries(body.get(field)):
                if path.startswith("${paths.logs}"):
                    assert path == "${paths.logs}/params.ok", (name, field, path)
    log = parse_params(PARAMS).paths.log_file("any_experiment")
    assert subprocess.run(["git", "check-ignore", "-q", str(log)], cwd=ROOT).returncode == 0, log


def test_the_first_stages_wait_for_validate():
    """validate reads the whole params file and every stage without other inputs depends on its
    output, so a params error stops `dvc repro` before any stage removes its outputs."""
    validate = DVC["stages"]["validate"]
    marker = entries(validate["outs"])[0]
    assert validate["params"] == [{"params.yaml": None}]
    for name, spec in DVC["stages"].items():
        body = spec.get("do", spec)
        upstream = [d for d in entries(body["deps"]) if d.startswith("${paths.") and d != marker]
        if name != "validate" and not upstream:
            assert marker in entries(body["deps"]), name


def module_file(name: str) -> Path | None:
    """The file of a dotted torchrepro module name (a package's __init__.py), or None."""
    base = PACKAGE.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, everywhere: bool, type_checking: bool = False) -> set[str]:
    """torchrepro modules that `path` imports when it is imported or, with `everywhere`, also inside
    its functions. `if TYPE_CHECKING:` blocks never run and count only with `type_checking`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and not type_checking:
                child = ast.Module(body=child.orelse, type_ignores=[])
            elif not everywhere and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("torchrepro"):
                for alias in child.names:  # `from torchrepro.x import y`: y may be a module or a name in x
                    sub = f"{child.module}.{alias.name}"
                    found.add(sub if module_file(sub) else child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("torchrepro."))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def with_parents(name: str) -> set[str]:
    """Importing a.b.c runs the __init__ of a.b too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def stage_imports(script: Path) -> set[Path]:
    """The files of every torchrepro module a stage script can import. The script and the
    modules it names are read whole (their functions are what the stage runs); any further
    module contributes the imports at its top level, which run as soon as it is imported."""
    entry = imported_modules(script, everywhere=True)
    entry |= {m for name in set(entry) if (f := module_file(name)) for m in imported_modules(f, everywhere=True)}
    seen: set[str] = set()
    todo = [p for name in entry for p in with_parents(name)]
    while todo:
        name = todo.pop()
        if name not in seen and (file := module_file(name)):
            seen.add(name)
            todo += [p for m in imported_modules(file, everywhere=False) for p in with_parents(m)]
    return {module_file(name) for name in seen} - {PACKAGE / "__init__.py"}


def is_docstring_only(path: Path) -> bool:
    """A package __init__ holding only its docstring: nothing in it can change an output."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def stage_code_deps(name: str) -> tuple[Path, list[Path], set[Path]]:
    spec = DVC["stages"][name]
    body = spec.get("do", spec)
    deps = entries(body["deps"])
    scripts = [d for d in deps if d.startswith("stages/")]
    assert len(scripts) == 1, (name, scripts)
    assert f" {scripts[0]}" in body["cmd"]  # the script in deps is the one the command runs
    listed = [ROOT / d for d in deps if d.startswith("src/torchrepro/")]
    needed = {f for f in stage_imports(ROOT / scripts[0]) if not is_docstring_only(f)}
    return ROOT / scripts[0], listed, needed


@pytest.mark.parametrize("stage", list(DVC["stages"]))
def test_stage_deps_list_every_module_it_imports(stage):
    script, listed, needed = stage_code_deps(stage)
    for dep in listed:
        assert dep.exists(), f"{stage}: deps name a missing path {dep}"
    missing = {f for f in needed if not any(f == d or d in f.parents for d in listed)}
    assert sorted(str(f.relative_to(ROOT)) for f in missing) == [], (
        f"{stage}: imported by {script.name} but not in deps"
    )


@pytest.mark.parametrize("stage", list(DVC["stages"]))
def test_stage_deps_list_no_module_it_does_not_import(stage):
    """A dep the stage never imports would rerun it for edits that cannot change its outputs."""
    _, listed, needed = stage_code_deps(stage)
    unused = [d for d in listed if not any(f == d or d in f.parents for f in needed)]
    assert sorted(str(d.relative_to(ROOT)) for d in unused) == [], f"{stage}: in deps but not imported"


def test_import_walk_sees_lazy_and_transitive_imports():
    """The walk itself: download reaches the HTTP code through download/__init__ -> mnist; the
    train stage reaches params through cli's lazy import and does not reach the sources."""
    relative = lambda files: {str(f.relative_to(PACKAGE)) for f in files}  # noqa: E731
    download = relative(stage_imports(ROOT / "stages" / "download.py"))
    assert {"download/sources.py", "download/mnist.py", "download/http.py", "core/params.py", "core/io.py"} <= download
    train = relative(stage_imports(ROOT / "stages" / "train.py"))
    assert {"train/stage.py", "optim.py", "models/nets.py", "normalize/store.py", "core/params.py"} <= train
    assert "download/sources.py" not in train and "normalize/prepare.py" not in train
    evaluate = relative(stage_imports(ROOT / "stages" / "evaluate.py"))
    assert not any(f.startswith("train/") for f in evaluate)  # no later or sibling stage's code


def test_no_module_imports_a_later_stages_code():
    """Layers point down: each room of the package imports only the rooms before it. Core is
    at the bottom and the stages follow the DAG; models (shared by train, evaluate and predict)
    and optim (by validate and train) lie below what uses them, and validate, which checks the
    params against what the sources, the models and torch.optim accept, lies above those and
    below the training it guards."""
    order = ["core", "download", "normalize", "models", "optim", "validate", "train", "evaluate", "plot", "report"]
    for path in PACKAGE.rglob("*.py"):
        room = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if room not in order:
            continue
        for name in imported_modules(path, everywhere=True):
            target = name.split(".")[1]
            if target in order and target != room:
                assert order.index(target) < order.index(room), f"{path.relative_to(PACKAGE)} imports {name}"


def module_name(path: Path) -> str:
    """The dotted name of a file under src/torchrepro (a package's __init__.py names the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_modules_import_each_other():
    """No import circle, not even one that only a type checker follows or that a function
    closes lazily: each module can be read with what it builds on already known."""
    graph = {
        module_name(path): {m for m in imported_modules(path, everywhere=True, type_checking=True) if module_file(m)}
        for path in PACKAGE.rglob("*.py")
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import circle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert {"torchrepro.train.loop", "torchrepro.optim", "torchrepro.core.cli"} <= set(graph)  # the walk saw the tree


def test_modules_are_imported_by_statement_not_by_string():
    """The deps check follows import statements: a module imported from its name as a string
    (importlib.import_module, __import__) would escape it, and a reader as well."""
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                assert called not in ("importlib.import_module", "import_module", "__import__"), f"{path}: {called}"
