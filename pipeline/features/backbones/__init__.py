"""Every backbone, imported explicitly here so registering never depends on import side effects elsewhere."""

from pipeline.features.backbones import conch, hlss, plip, quiltnet, tiny  # noqa: F401  (registers them)
from pipeline.features.registry import list_backbones

hlss.register_variants(list_backbones())  # after every VLM: `{vlm}_hlss` for each
