"""Write docs/cli.md, the ``tsad`` command reference, from the typer app itself.

The flags, defaults and help texts come from ``pipeline.cli.app`` through typer's own Markdown
generator (``typer.cli.get_docs_for_click``, what ``typer pipeline.cli utils docs`` runs), so the
reference cannot drift from the code: ``tests/test_docs.py`` regenerates it and fails when the
committed file differs. Help texts are written as plain Markdown (no HTML escaping), and
``TSAD_*`` variables are removed from the environment first, so a setting exported in the shell
cannot leak into a documented default.

    PYTHONPATH=. .venv/bin/python docs/gen_cli.py            # rewrite docs/cli.md
    PYTHONPATH=. .venv/bin/python docs/gen_cli.py --check    # exit 1 when docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CLI_MD = Path(__file__).resolve().parent / "cli.md"
HEADER = (
    "<!-- Generated from the typer app by docs/gen_cli.py: do not edit by hand.\n"
    "     Regenerate with `PYTHONPATH=. .venv/bin/python docs/gen_cli.py`. -->\n\n"
)


def render() -> str:
    """The Markdown reference of every ``tsad`` command, as typer documents it."""
    for key in [key for key in os.environ if key.upper().startswith("TSAD_")]:
        del os.environ[key]
    import typer
    import typer.cli

    from pipeline.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="tsad")  # no ctx.obj: typer writes plain text, not HTML
    docs = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="tsad", title="`tsad` command reference")
    return HEADER + docs.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=CLI_MD, help="where to write (default: docs/cli.md)")
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
