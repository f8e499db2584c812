"""An HTML template for `dvc plots show` that renders its plots without a network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline its interactive
plots (loss curves, confusion matrices) stay blank. This template inlines the same libraries,
bundled by the vl-convert-python package. DVC fills in `{plot_divs}` (one <div> per plot, whose
script calls the global `vegaEmbed`) and `{refresh_tag}`; the template has no `{scripts}`,
which is where DVC would put its CDN <script> tags.

    python -m torchrepro.plots_html .dvc/plots_offline.html

`make setup` runs this and points DVC at the file (`plots.html_template` in .dvc/config.local).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchrepro.core.cli import run
from torchrepro.core.errors import UserError
from torchrepro.core.io import write_text

# DVC's plot templates are written for Vega-Lite v5 (their `$schema`): bundle the newest v5 that
# vl-convert-python ships rather than its default v6. Its vega is 6, which runs v5 specs.
VEGA_LITE_VERSION = "v5.21"

# What DVC replaces anywhere in a template (dvc_render.html.HTML.embed), and what an inline
# <script> cannot hold as plain text: the bundle must contain none of these.
FORBIDDEN_IN_BUNDLE = ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script", "<!--")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed}, bundled by vl-convert-python {vl_convert} -->
    <script type="text/javascript">
(function () {
{bundle}
})();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def vega_bundle(vl_version: str = VEGA_LITE_VERSION) -> tuple[str, dict[str, str]]:
    """The vega + vega-lite + vega-embed script (it sets window.vegaEmbed) and its versions."""
    from importlib.metadata import version

    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    found = [text for text in FORBIDDEN_IN_BUNDLE if text.lower() in bundle.lower()]
    if found:
        raise UserError(f"the vl-convert-python bundle contains {found[0]!r}: it cannot be inlined in the page")
    versions = {
        "vega": vl_convert.get_vega_version(),
        "vega_lite": vl_version.removeprefix("v"),
        "vega_embed": vl_convert.get_vega_embed_version(),
        "vl_convert": version("vl-convert-python"),
    }
    return bundle, versions


def page_template(bundle: str, versions: dict[str, str]) -> str:
    """The template text: DVC's default page with the bundle inline instead of CDN scripts.

    The bundle runs inside a function: its minified top-level names (`n`, `t`, `w`, ...) would
    otherwise be globals, and a page script declaring one with `let` or `const` would fail.
    It sets window.vegaEmbed, window.vega and window.vegaLite itself.
    """
    page = PAGE
    # str.replace, not str.format: the page keeps DVC's own `{...}` placeholders and CSS braces.
    for name, value in versions.items():
        page = page.replace("{" + name + "}", value)
    return page.replace("{bundle}", bundle)


def write_template(path: str | Path) -> Path:
    """Write the template to `path` atomically; the same installed package gives the same bytes."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give the template's file name, e.g. {path / 'plots_offline.html'}")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent} does not exist: create it or choose another path")
    write_text(path, page_template(*vega_bundle()))
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m torchrepro.plots_html OUTPUT`: write the template; a bad path is one `error:` line."""
    parser = argparse.ArgumentParser(
        prog="python -m torchrepro.plots_html",
        description="Write an HTML template for `dvc plots show` whose vega scripts are inline, "
        "so that the plots render without a network.",
    )
    parser.add_argument("output", help="the template file to write, e.g. .dvc/plots_offline.html")
    args = parser.parse_args(argv)

    def main() -> None:
        try:
            write_template(args.output)
        except ModuleNotFoundError as error:
            if error.name != "vl_convert":
                raise
            raise UserError(
                "vl-convert-python is not installed: run `make setup` (it installs requirements.txt)"
            ) from None

    run(main)


if __name__ == "__main__":
    main()
