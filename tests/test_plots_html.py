"""The offline page template for `dvc plots show`: what it inlines, that DVC takes it, its CLI.

Whether a browser really draws the plots from it is tests/e2e/test_plots_offline.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchrepro import plots_html

DVC = Path(sys.executable).parent / "dvc"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return plots_html.write_template(tmp_path_factory.mktemp("template") / "plots_offline.html")


@pytest.fixture(scope="module")
def bundle() -> str:
    return plots_html.vega_bundle()[0]


def script_tags(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", html, flags=re.IGNORECASE)


def test_template_inlines_the_vega_bundle_and_loads_no_script(template, bundle):
    html = template.read_text(encoding="utf-8")
    assert bundle in html
    assert "window.vegaEmbed=" in bundle  # the global that each of DVC's plot divs calls
    assert len(script_tags(html)) == 1 and "src" not in script_tags(html)[0]
    # DVC fills in the plots; `{scripts}` would bring back its CDN <script src=...> tags.
    assert "{plot_divs}" in html and "{refresh_tag}" in html and "{scripts}" not in html
    assert "<link" not in html


def test_template_is_the_same_bytes_each_time(template, tmp_path):
    # In a new process: vl-convert-python keeps the bundle it built for the one before.
    done = run_cli("again.html", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert (tmp_path / "again.html").read_bytes() == template.read_bytes()


def test_dvc_fills_the_template_named_in_its_config(template, bundle, tmp_path):
    """`plots.html_template` in .dvc/config.local, relative to .dvc/, as `make setup` writes it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "loss.csv").write_text("epoch,loss\n1,0.5\n2,0.25\n")

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(DVC), *args], cwd=repo, capture_output=True, text=True, check=True)

    dvc("init", "-q", "--no-scm")
    (repo / ".dvc" / "offline.html").write_bytes(template.read_bytes())
    dvc("config", "--local", "plots.html_template", "offline.html")
    dvc("plots", "show", "loss.csv", "-o", "out")

    page = (repo / "out" / "index.html").read_text(encoding="utf-8")
    assert bundle in page
    assert page.count("vegaEmbed('#") == 1  # the one plot, placed where the template said
    assert "{plot_divs}" not in page
    assert [tag for tag in script_tags(page) if "src" in tag] == []  # DVC added no CDN script


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchrepro.plots_html", *args], cwd=cwd, capture_output=True, text=True
    )


def test_cli_help_and_one_line_errors(tmp_path):
    shown = run_cli("--help", cwd=tmp_path)
    assert shown.returncode == 0 and "dvc plots show" in shown.stdout

    for bad, says in [(".", "is a directory"), ("missing/plots.html", "missing does not exist")]:
        done = run_cli(bad, cwd=tmp_path)
        assert done.returncode == 2
        assert done.stderr.startswith("error: ") and says in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_names_the_package_to_install_when_it_is_missing(tmp_path):
    # None in sys.modules makes `import vl_convert` fail as in a venv without the package.
    code = "import sys; sys.modules['vl_convert'] = None; from torchrepro.plots_html import main; main(['t.html'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "error: vl-convert-python is not installed: run `make setup` (it installs requirements.txt)\n"
    assert not (tmp_path / "t.html").exists()
