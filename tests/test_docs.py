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


#: a generated settings table in the docs: `<!-- settings: NAME -->` ... `<!-- end settings -->`
SETTINGS_BLOCK = re.compile(r"(<!-- settings: (\w+) -->\n)(.*?)(<!-- end settings -->)", re.DOTALL)


def regenerate_settings_tables(text: str) -> str:
    """The page with every settings block filled from its method's or task type's dataclass (`methods --settings`)."""
    from pipeline.commands.methods import settings_table

    return SETTINGS_BLOCK.sub(lambda m: f"{m.group(1)}{settings_table(m.group(2))}\n{m.group(4)}", text)


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.name)
def test_settings_tables_in_the_docs_are_the_dataclasses(page):
    """The docs' settings tables are generated from the settings dataclasses (their one home) and kept equal;
    `HIVE_WRITE_DOCS=1 pytest tests/test_docs.py` rewrites them after a change."""
    import os

    text = page.read_text(encoding="utf-8")
    fresh = regenerate_settings_tables(text)
    if fresh != text and os.environ.get("HIVE_WRITE_DOCS"):
        page.write_text(fresh, encoding="utf-8")
        return
    assert fresh == text, f"{page.name}: a settings table differs from its dataclass (HIVE_WRITE_DOCS=1 rewrites it)"


def test_every_method_and_task_type_with_settings_has_a_table_in_the_docs():
    from pipeline.settings import describe
    from pipeline.training.methods import get_method, list_methods
    from pipeline.training.tasks import get_task_type, list_task_types

    documented = {m.group(2) for page in DOCS.rglob("*.md") for m in SETTINGS_BLOCK.finditer(page.read_text())}
    with_settings = {n for n in list_methods() if describe(get_method(n).Settings)}
    with_settings |= {n for n in list_task_types() if describe(get_task_type(n).Settings)}
    assert with_settings <= documented, sorted(with_settings - documented)
