"""The workflow tests' configs: YAML files under tests/configs/, merged in order into one override of config.yaml.

Each file holds only what it changes; `load_config("two_slides", "training")` is the two-slide demo with the
training overrides on top. Merging follows Snakemake's --configfile: dicts merge key by key, lists and scalars
replace (so a file's `tasks:` replaces the base's). Every call reads the files again, so a test may change the
dict it gets without touching another test's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base` as Snakemake merges config files: nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_file(name: str) -> Path:
    """The path of tests/configs/{name}.yaml (refusing a name with no file, so a typo is not an empty config)."""
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no test config {path}; have {sorted(p.stem for p in CONFIGS.glob('*.yaml'))}")
    return path


def load_config(*names: str, **sections: Any) -> dict[str, Any]:
    """The files `names` merged in order, then `sections` (top-level keys) merged over them."""
    config: dict[str, Any] = {}
    for name in names:
        config = merge(config, yaml.safe_load(config_file(name).read_text()) or {})
    return merge(config, sections)
