"""Where a backbone's weights come from, and strict loading with errors that name the file and the keys.

Order (TRIDENT's): an explicit local file, else the backbone's hub id (download, needs the network), and random
initialisation only when asked for by name. Every source is recorded (path or hub file, sha256, or "random"),
so an output file always says which model made it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.errors import PipelineError
from pipeline.features.backbone_cfg import RANDOM, BackboneCfg

if TYPE_CHECKING:
    from pipeline.features.architectures.base import Backbone

log = logging.getLogger(__name__)

#: tokenizer files looked for beside a weights file (the Hugging Face name, and CONCH's own).
TOKENIZER_FILES = ("tokenizer.json", "conch_byte_level_bpe_uncased.json")
#: at most this many key names are listed per kind of mismatch in an error.
MAX_KEYS_SHOWN = 12


class CheckpointError(PipelineError):
    """A weights file cannot be read or does not fit the architecture."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "random", "file" or "hub"
    path: Path | None
    label: str  # recorded in outputs: the file path, "hf-hub:org/repo/file", or "random"
    sha256: str = ""
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def attrs(self) -> dict[str, str | int]:
        """Output attrs naming the weights (random ones say so, with their seed)."""
        out: dict[str, str | int] = {"weights": self.label, "weights_sha256": self.sha256}
        if self.is_random:
            out["weights_seed"] = int(self.seed or 0)
        return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _hub_repo(cfg: BackboneCfg, weights: str) -> str | None:
    if weights.startswith("hf-hub:"):
        return weights[len("hf-hub:") :]
    if cfg.hub_id is not None and weights == cfg.hub_id and not Path(weights).exists():
        return weights
    return None


def _download(cfg: BackboneCfg, repo: str) -> Path:
    if not cfg.hub_filename:
        raise PipelineError(f"backbone '{cfg.name}' names no weights file to fetch from hub repo {repo}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, cfg.hub_filename))
    except Exception as err:  # network, authentication (gated repos) or missing file: all end the same way
        raise PipelineError(
            f"backbone '{cfg.name}': cannot fetch {cfg.hub_filename} from hub repo {repo} "
            f"({type(err).__name__}: {err}). Without network access (or for a gated repo), download the file "
            f"elsewhere and give its local path as the weights (config features.weights)."
        ) from err


def resolve_weights(cfg: BackboneCfg, weights: str | None, seed: int = 0) -> WeightsSource:
    """Decide the weights source; warn loudly for random ones; fail clearly for a missing file or download."""
    if weights == RANDOM:
        log.warning(
            "!!! backbone '%s' uses RANDOM weights (seed %d): its features have no pretrained meaning. "
            "Use this only for tests and the offline demo; outputs record weights='random'. !!!",
            cfg.name,
            seed,
        )
        return WeightsSource("random", None, RANDOM, "", seed)
    if weights is None or weights == "":
        if cfg.hub_id is None:
            raise PipelineError(
                f"backbone '{cfg.name}' has no published weights: give a checkpoint file, or 'random' for a "
                "random initialisation (config features.weights)"
            )
        weights = cfg.hub_id
    repo = _hub_repo(cfg, weights)
    if repo is not None:
        path = _download(cfg, repo)
        return WeightsSource("hub", path, f"hf-hub:{repo}/{cfg.hub_filename}", sha256_file(path))
    path = Path(weights)
    if not path.is_file():
        raise PipelineError(f"weights file {path} for backbone '{cfg.name}' does not exist (config features.weights)")
    return WeightsSource("file", path, str(path), sha256_file(path))


def find_tokenizer(weights_path: Path | None) -> str | None:
    """A tokenizer file lying beside the weights file, if any (how a downloaded model folder usually looks)."""
    if weights_path is None:
        return None
    for name in TOKENIZER_FILES:
        candidate = weights_path.parent / name
        if candidate.is_file():
            return str(candidate)
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint (.safetensors, or a torch file holding a state dict, possibly wrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: entries that are not tensors: {bad[:MAX_KEYS_SHOWN]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    more = f", ... ({len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else ""
    return f"[{shown}{more}]"


def load_checkpoint(backbone: "Backbone", source: WeightsSource) -> None:
    """Load a checkpoint into the backbone's model; every key must match in name and shape.

    The backbone may convert a foreign layout first (PLIP's Hugging Face keys) and may declare prefixes of
    published checkpoints that embedding does not use (CONCH's caption decoder); nothing else is skipped.
    """
    assert source.path is not None
    state = backbone.convert_state_dict(read_state_dict(source.path))
    ignored = [k for k in state if k.startswith(tuple(backbone.ignored_checkpoint_prefixes))]
    if ignored:
        log.info("checkpoint %s: %d keys of unused heads skipped (%s)", source.path, len(ignored),
                 ", ".join(backbone.ignored_checkpoint_prefixes))
        state = {k: v for k, v in state.items() if k not in set(ignored)}
    expected = backbone.model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the file {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the file {_listed(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) {_listed(shapes)}")
        raise CheckpointError(
            f"checkpoint {source.path} does not fit backbone '{backbone.cfg.name}' ({backbone.cfg.architecture}): "
            + "; ".join(parts)
        )
    backbone.model.load_state_dict(state, strict=True)
    log.info("backbone '%s': loaded %d tensors from %s (sha256 %s)", backbone.cfg.name, len(state), source.path,
             source.sha256[:16])
