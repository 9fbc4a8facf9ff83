"""Every backbone, imported explicitly here so registering never depends on import side effects elsewhere."""

from pipeline.features.backbones import (  # noqa: F401  (registers them)
    conch,
    hlss,  # noqa: F401, E402  (after every VLM: registers their variants)
    plip,
    quiltnet,
    tiny,
)
