"""`{vlm}_hlss` features from the VLM's cached ones: the adapter applied to them, no slide read again.

Extraction with `{vlm}_hlss` is the VLM's tower followed by the adapter; when pretraining left the tower as it was
(`trainable: adapter`), the tower's part is exactly the VLM's feature files, so adapting them gives the same
features (tested against extraction) at no decoding cost. The source files must be the VLM's, made with the
weights the checkpoint was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from pipeline.errors import PipelineError
from pipeline.features.architectures.hlss import HlssBackbone
from pipeline.formats import PathLike, read_features, write_features

log = logging.getLogger(__name__)


def check_source(backbone: HlssBackbone, attrs: dict, path: Path) -> None:
    """The feature file must be the VLM's, from the weights the adapter was trained on."""
    assert backbone.vlm.weights is not None
    expected = backbone.vlm.weights.attrs()
    found = {k: attrs.get(k) for k in expected}
    if attrs.get("backbone") != backbone.vlm_name or {k: str(v) for k, v in found.items()} != {
        k: str(v) for k, v in expected.items()
    }:
        raise PipelineError(
            f"slide '{attrs.get('slide_id', path.stem)}': {path} holds features of backbone {attrs.get('backbone')!r} "
            f"with weights {found}, not of {backbone.vlm_name} with the weights {backbone.cfg.name} was trained on "
            f"({expected}); extract {backbone.cfg.name} from the slides instead"
        )


def adapt_feature_files(backbone: HlssBackbone, sources: Sequence[PathLike], outputs: Sequence[PathLike]) -> None:
    """Write `outputs[i]` = the adapter applied to the VLM features in `sources[i]` (coords and slide attrs kept)."""
    if backbone.tunes_tower:
        raise PipelineError(f"{backbone.cfg.name} tuned its tower's last blocks: its features must be extracted "
                            "from the slides, not adapted from the VLM's")
    if len(sources) != len(outputs):
        raise PipelineError(f"{len(sources)} source feature files but {len(outputs)} outputs")
    own = backbone.attrs()
    for src, dest in zip(map(Path, sources), outputs):
        features, coords, attrs = read_features(src)
        check_source(backbone, attrs, src)
        with torch.no_grad():
            adapted = backbone.adapt(torch.from_numpy(features)).numpy()
        write_features(dest, adapted, coords, {**attrs, **own, "adapted_from": str(src)})
    log.info("%s: adapted %d feature files of %s", backbone.cfg.name, len(sources), backbone.vlm_name)
