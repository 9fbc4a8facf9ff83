"""How an HLSS variant is named and which of its cfg fields are its own: read by the variant's registration
(pipeline.features.backbones.hlss) and by its architecture (pipeline.features.architectures.hlss), which therefore
need not import each other. Torch-free (the workflow reads `vlm_of` while it builds the DAG).
"""

from __future__ import annotations

#: the suffix that names a VLM's HLSS variant
HLSS_SUFFIX = "_hlss"
#: cfg fields that describe the variant itself; every other field (and override) is the VLM's
OWN_FIELDS = ("name", "architecture", "hub_id", "hub_filename", "licence", "paper")


def hlss_name(vlm: str) -> str:
    return vlm + HLSS_SUFFIX


def vlm_of(name: str) -> str | None:
    """The VLM under `{vlm}_hlss`, or None for a backbone that is not an HLSS variant."""
    return name[: -len(HLSS_SUFFIX)] if name.endswith(HLSS_SUFFIX) else None
