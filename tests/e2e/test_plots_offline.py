"""`dvc plots show` pages in a real headless Chromium with the network blocked.

The page made with the template `make setup` writes must draw every vega plot without a script
error; the page made with DVC's default template, which loads vega from a CDN, must draw none:
the template is what makes the difference.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: `make test` installs Debian's package where it runs as root, "
    "or run `apt-get install chromium`",
)

# Runs first in <head>, before any of the page's scripts: keeps the page's uncaught errors (a
# vega script that did not load shows up as `vegaEmbed is not defined`) in an attribute of
# <html>, which --dump-dom prints.
ERROR_PROBE = """<script>(function () {
  var errors = [], root = document.documentElement;
  function keep(message) { errors.push(String(message)); root.setAttribute("data-errors", JSON.stringify(errors)); }
  root.setAttribute("data-errors", "[]");
  addEventListener("error", function (e) { keep(e.message); });
  addEventListener("unhandledrejection", function (e) { keep("unhandled rejection: " + e.reason); });
})();</script>"""

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No network for the page: no host name resolves, and every http(s) request goes to a
    # proxy on a closed local port (so a literal IP address cannot get through either).
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
    # Run the page's timers and promises for up to 10 s of virtual time before dumping the DOM.
    "--virtual-time-budget=10000",
]  # fmt: skip

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Rendered(HTMLParser):
    """Per vega plot div of the dumped DOM: its classes, its `marks` svg/canvas elements and the
    data items drawn in it (vega's svg elements of role graphics-symbol inside a `role-mark`
    group: lines, points, heatmap cells; not axes or legends); and the page's errors."""

    def __init__(self, plot_ids: list[str]):
        super().__init__()
        self.plots = {i: {"class": "", "marks": 0, "items": 0} for i in plot_ids}
        self.errors: list[str] | None = None
        self.stack: list[tuple[str, list[str], str | None]] = []  # (tag, classes, plot id it opened)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "html" and "data-errors" in attrs:
            self.errors = json.loads(attrs["data-errors"])
        inside = next((plot for *_, plot in reversed(self.stack) if plot), None)
        if inside:
            self.plots[inside]["marks"] += tag in ("svg", "canvas") and "marks" in classes
            parent = self.stack[-1]
            self.plots[inside]["items"] += attrs.get("role") == "graphics-symbol" and "role-mark" in parent[1]
        opened = attrs.get("id") if tag == "div" and attrs.get("id") in self.plots else None
        if opened:
            self.plots[opened]["class"] = attrs.get("class", "")
        if tag not in VOID:
            self.stack.append((tag, classes, opened))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        while self.stack:  # close up to the matching tag, as a browser's serializer nests them
            if self.stack.pop()[0] == tag:
                break


def render(index: Path, tmp_path: Path) -> Rendered:
    """Load a `dvc plots show` page (with the error probe) offline in Chromium; parse its DOM."""
    html = index.read_text(encoding="utf-8")
    plot_ids = re.findall(r"vegaEmbed\('#([^']+)'", html)  # one call per vega plot div
    assert plot_ids, f"{index} has no vega plot"
    probed = index.with_name("probed.html")  # beside index.html: its static/ images still resolve
    probed.write_text(html.replace("<head>", "<head>" + ERROR_PROBE, 1), encoding="utf-8")
    profile = tmp_path / f"chromium-profile-{index.parent.name}"
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    page = Rendered(plot_ids)
    page.feed(done.stdout)
    assert page.errors is not None, "the error probe did not run: " + done.stdout[:500]
    return page


@pytest.fixture
def pages(workspace, tmp_path) -> dict[str, Rendered]:
    """The reproduced project's plots page, from DVC's default template and from ours."""
    workspace.dvc("plots", "show", "-o", str(tmp_path / "default"))
    # What `make setup` does: write the template, then point DVC at it (relative to .dvc/).
    workspace.python("-m", "torchrepro.plots_html", ".dvc/plots_offline.html")
    workspace.dvc("config", "--local", "plots.html_template", "plots_offline.html")
    workspace.dvc("plots", "show", "-o", str(tmp_path / "offline"))
    return {name: render(tmp_path / name / "index.html", tmp_path) for name in ("default", "offline")}


def shipped_only(plot: str, experiments: set[str]) -> bool:
    """A top-level chart (`<experiment>-<metric>`) of a shipped experiment that the tiny params
    leave out: dvc.yaml lists the shipped experiments' charts, and such a chart has no data."""
    name, _, metric = plot.rpartition("-")
    return metric in ("loss", "accuracy") and "/" not in plot and name not in experiments


def test_offline_template_draws_every_vega_plot_and_dvc_default_page_draws_none(pages, workspace):
    offline, default = pages["offline"], pages["default"]
    assert set(offline.plots) == set(default.plots)  # the same plots on both pages
    assert any("confusion" in plot for plot in offline.plots)  # a heatmap as well as the curves
    experiments = set(workspace.params()["experiments"])
    assert {"iris_mlp-loss", "iris_mlp-accuracy", "linreg_line5-loss"} <= set(offline.plots)  # overlays

    assert offline.errors == []
    for plot, seen in offline.plots.items():
        if shipped_only(plot, experiments):
            continue
        assert "vega-embed" in seen["class"].split(), (plot, seen)  # vegaEmbed ran on the div
        assert seen["marks"] == 1 and seen["items"] > 0, (plot, seen)  # and drew its data

    assert len(default.errors) == len(default.plots), default.errors  # one per plot div
    assert all("vegaEmbed is not defined" in error for error in default.errors), default.errors
    assert all(seen == {"class": "", "marks": 0, "items": 0} for seen in default.plots.values()), default.plots
