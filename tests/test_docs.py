"""The documentation stays true: the CLI reference matches the code, links resolve, the README is short.

``docs/cli.md`` is generated from the typer app by ``docs/gen_cli.py``; regenerating it into a
temporary file must give the committed text (else a flag changed and nobody ran the generator).
Every relative link in README.md and docs/*.md must name a file that exists and, with an anchor,
a heading in it (GitHub's anchor rules, ``test_deploy_rules.github_anchors``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from test_deploy_rules import github_anchors

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR = REPO_ROOT / "docs" / "gen_cli.py"
CLI_MD = REPO_ROOT / "docs" / "cli.md"
MARKDOWN = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# [text](target) outside code; images and absolute URLs are not checked.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TSAD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_reference_is_generated_from_the_current_cli(tmp_path):
    fresh = tmp_path / "cli.md"
    result = generate("--output", str(fresh))
    assert result.returncode == 0, result.stderr
    assert fresh.read_text() == CLI_MD.read_text(), (
        "docs/cli.md is stale: run `PYTHONPATH=. .venv/bin/python docs/gen_cli.py` and commit it"
    )
    for flag in ("--routing", "--alertmanager-url", "--commit-every-events", "--exit-when-idle", "--cv"):
        assert f"`{flag}" in fresh.read_text(), flag


def test_cli_reference_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "cli.md"
    stale.write_text(CLI_MD.read_text().replace("--metrics-port", "--metrics-prt", 1))
    result = generate("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "stale" in result.stderr


def test_readme_fits_on_a_screen():
    lines = (REPO_ROOT / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move details to docs/"


def markdown_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_links_between_the_docs_resolve():
    assert markdown_links(REPO_ROOT / "README.md"), "the README links to the docs"
    broken = []
    for path in MARKDOWN:
        for target in markdown_links(path):
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif anchor and (linked.suffix != ".md" or anchor not in github_anchors(linked.read_text())):
                broken.append(f"{path.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_anchor_parser_can_say_no():
    anchors = github_anchors("# Alert: TsadScorerDown\n```bash\n# not a heading\n```\n## Model sources (`--x`)\n")
    assert anchors == {"alert-tsadscorerdown", "model-sources---x"}
