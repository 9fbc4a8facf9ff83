"""The documentation holds together: a short README, links that lead somewhere, and a module map that names real code.

Fast and file-only: no snakemake, no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250

#: the two commands the README promises; `.ci/run` runs the second one exactly.
COMMANDS = ('pip install -e . && snakemake --cores 2', 'pip install -e ".[test]" && pytest')

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
PATH = re.compile(r"(?<![\w/.])pipeline/[\w/.\-]*")
MODULE = re.compile(r"(?<![\w/.])pipeline(?:\.[A-Za-z_]\w*)+")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(md: Path) -> list[str]:
    """Link targets of a markdown file that point into the repository (code blocks and URLs left out)."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto: and in-page anchors
        targets.append(target.split("#", 1)[0])
    return targets


def module_exists(dotted: str) -> bool:
    """`pipeline.a.b[.attr...]`: the packages and module exist; what follows a module is a name defined in it."""
    parts = dotted.split(".")
    here = REPO / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if (here / part).is_dir():
            here = here / part
            continue
        if (here / f"{part}.py").is_file():
            rest = parts[i + 1:]
            return not rest or re.search(rf"\b{re.escape(rest[0])}\b", (here / f"{part}.py").read_text()) is not None
        init = here / "__init__.py"
        return init.is_file() and re.search(rf"\b{re.escape(part)}\b", init.read_text()) is not None
    return here.is_dir()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_keeps_the_two_commands(command):
    assert command in README.read_text(encoding="utf-8")


def test_docs_have_an_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    unlisted = [str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")
                if p.name != "README.md" and str(p.relative_to(DOCS)) not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md):
    broken = [t for t in relative_links(md) if t and not (md.parent / t).exists()]
    assert not broken, f"{md.relative_to(REPO)}: links to missing files {broken}"


def test_architecture_names_real_code():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    paths = {m.rstrip(".") for m in PATH.findall(text)}
    modules = {m for m in MODULE.findall(text)}
    assert paths and modules
    missing = [p for p in sorted(paths) if not (REPO / p).exists() and not (REPO / f"{p}.py").exists()]
    missing += [m for m in sorted(modules) if not module_exists(m)]
    assert not missing, f"docs/architecture.md names code that does not exist: {missing}"


def test_the_checks_catch_mistakes(tmp_path):
    """The helpers flag what they should, so a passing run means something."""
    md = tmp_path / "page.md"
    md.write_text("[ok](https://example.org) [a](#x) [b](missing.md#y)\n```\n[c](in_code.md)\n```\n")
    assert relative_links(md) == ["missing.md"]
    assert module_exists("pipeline.training.registry.register_method")
    assert not module_exists("pipeline.training.no_such_module")
    assert not module_exists("pipeline.training.registry.no_such_name")
