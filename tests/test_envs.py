"""The conda environments (envs/*.yaml, used with `--sdm conda`) agree with pyproject.toml and suffice for their rules.

Conda cannot be run here, so the checks are made against what the code needs:
- every package an env lists is a pyproject dependency with the same version bounds, and every runtime
  dependency of pyproject is in some env;
- every rule running `python -m pipeline CMD` has an env holding what CMD imports: the declared dependencies
  loaded when `python -m pipeline` starts (measured in a subprocess), plus the third-party modules its code can import
  later (read from the source, function-level imports included).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import REPO

tomllib = pytest.importorskip("tomllib")

ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
#: conda-forge names that differ from the PyPI name (only needed where an env uses the conda package)
CONDA_TO_PYPI = {"pytorch": "torch", "py-opencv": "opencv-python-headless", "pytorch_geometric": "torch-geometric"}
#: pyproject dependencies no job imports: the workflow driver itself
NOT_FOR_JOBS = {"snakemake"}
#: a package that needs another at run time without importing it by name
IMPLIED = {"openslide-python": {"openslide-bin"}, "tifffile": {"imagecodecs"}}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, SpecifierSet]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


def env_packages(path: Path) -> dict[str, SpecifierSet]:
    """name (PyPI spelling, canonical) -> version bounds, from both the conda and the pip section."""
    deps = yaml.safe_load(path.read_text())["dependencies"]
    out: dict[str, SpecifierSet] = {}
    for dep in deps:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                req = Requirement(spec)
                out[canonicalize_name(req.name)] = req.specifier
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep.strip())
        assert m, f"{path.name}: cannot read conda spec {dep!r}"
        name, spec = m.groups()
        if name in ("python", "pip"):
            out[name] = SpecifierSet(spec)
            continue
        out[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(spec.replace(" ", ""))
    return out


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_is_a_conda_forge_env_with_python_and_pip(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"][0] == "conda-forge" and "defaults" not in spec["channels"], spec["channels"]
    packages = env_packages(env)
    assert packages["python"] == SpecifierSet(pyproject()["project"]["requires-python"])
    assert "pip" in packages
    pip = [s for d in spec["dependencies"] if isinstance(d, dict) for s in d.get("pip", [])]
    assert not [s for s in pip if s.startswith("-e")], (
        f"{env.name}: snakemake builds envs from a copy of the file, so a relative `-e ../` points nowhere"
    )


@pytest.mark.parametrize("env", env_files(), ids=lambda p: p.name)
def test_env_packages_have_pyprojects_bounds(env):
    declared = pyproject_requirements()
    for name, spec in env_packages(env).items():
        if name in ("python", "pip"):
            continue
        assert name in declared, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert spec == declared[name], f"{env.name}: {name}{spec} but pyproject.toml says {name}{declared[name]}"


def test_every_runtime_dependency_is_in_an_env():
    listed = set().union(*(env_packages(e) for e in env_files()))
    missing = set(pyproject_requirements()) - listed - NOT_FOR_JOBS
    assert not missing, f"pyproject.toml dependencies in no envs/*.yaml: {sorted(missing)}"


# --- rules and what their commands import -------------------------------------------------------------------


def rule_blocks() -> list[tuple[str, str, str]]:
    """(file name, rule name, text) of every rule and checkpoint in workflow/rules/*.smk."""
    blocks = []
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        starts = list(re.finditer(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M))
        for i, m in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            body = text[m.end() : end]
            if m2 := re.search(r"^\S", body, flags=re.M):  # the rule ends at the next top-level line
                body = body[: m2.start()]
            blocks.append((smk.name, m.group(1), body))
    return blocks


def rule_commands() -> list[tuple[str, str, str]]:
    """(rule, env file, pipeline command) for every rule whose shell names `python -m pipeline CMD`."""
    out = []
    for smk, rule, body in rule_blocks():
        conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
        commands = set(re.findall(r"(?:python|\$HIVE_PYTHON|\$\{\{HIVE_PYTHON:-python\}\}) -m pipeline ([a-z][a-z0-9_-]*)", body))
        if "-m pipeline {params.split_command}" in body:  # the splits rule runs each task type's split command
            from pipeline.training.tasks import get_task_type, list_task_types

            commands |= {get_task_type(t).split_command for t in list_task_types()}
        for cmd in sorted(commands):
            assert conda, f"{smk}: rule {rule} runs `python -m pipeline {cmd}` but has no conda: env"
            out.append((rule, str((RULES / conda.group(1)).resolve().relative_to(REPO)), cmd))
    return out


def test_every_shell_rule_names_an_existing_env():
    for smk, rule, body in rule_blocks():
        if "shell:" not in body:
            continue
        conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
        assert conda, f"{smk}: rule {rule} has a shell command but no conda: env"
        assert (RULES / conda.group(1)).resolve().is_file(), f"{smk}: rule {rule}: {conda.group(1)} does not exist"


_PROBE = """
import contextlib, io, json, sys
from pipeline.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--version"])
    except SystemExit:
        pass
print(json.dumps(sorted({m.split(".")[0] for m in list(sys.modules)})))
"""


@lru_cache(maxsize=1)
def startup_modules() -> set[str]:
    """Top-level modules `python -m pipeline` loads before it looks at the command (every job loads them).

    Today the CLI imports every command module to build its parser, so whatever any command imports at module
    level is loaded by all; a CLI that imported only the chosen command would shrink this to its own needs,
    which the source scan of that command covers.
    """
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"python -m pipeline --version failed: {proc.stderr[-2000:]}"
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def command_module_file(cmd: str) -> Path:
    import pipeline.cli

    for module in pipeline.cli.command_modules():
        if module.NAME == cmd:
            return Path(module.__file__)
    raise AssertionError(f"no pipeline command named {cmd!r}")


def source_imports(start: Path) -> set[str]:
    """Third-party top-level modules imported anywhere in `start` and the pipeline modules it reaches."""
    import ast

    package_root = REPO / "pipeline"
    seen: set[Path] = set()
    third: set[str] = set()
    todo = [start]

    def module_path(dotted: str) -> Path | None:
        base = REPO.joinpath(*dotted.split("."))
        for cand in (base / "__init__.py", base.with_suffix(".py")):
            if cand.is_file():
                return cand
        return None

    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.parent != package_root and path.parent.is_relative_to(package_root):
            todo.append(path.parent / "__init__.py")  # importing a submodule runs its package's __init__
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "pipeline":
                    if (p := module_path(name)) is not None:
                        todo.append(p)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third.add(top)
    return third


@lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(modules: set[str]) -> set[str]:
    mapping = _packages_distributions()
    return {canonicalize_name(d) for m in modules for d in mapping.get(m, [m])}


def needed_by(cmd: str) -> set[str]:
    declared = set(pyproject_requirements())
    # loaded at start: only the project's own dependencies count (the rest came in with one of them)
    at_start = distributions(startup_modules()) & declared
    later = distributions(source_imports(command_module_file(cmd)))
    undeclared = later - declared
    assert not undeclared, f"`pipeline {cmd}` imports {sorted(undeclared)}, which pyproject.toml does not declare"
    needed = at_start | later
    return needed | set().union(*(IMPLIED.get(n, set()) for n in needed))


@pytest.mark.parametrize("rule,env,cmd", rule_commands(), ids=lambda v: v if "/" not in v else Path(v).name)
def test_rule_env_holds_what_its_command_imports(rule, env, cmd):
    missing = needed_by(cmd) - set(env_packages(REPO / env))
    assert not missing, f"rule {rule} runs `python -m pipeline {cmd}` in {env}, which lacks {sorted(missing)}"
