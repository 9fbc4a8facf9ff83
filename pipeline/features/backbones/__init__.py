"""Every backbone, imported explicitly here so registering never depends on import side effects elsewhere."""

from pipeline.features.backbones import conch, plip, quiltnet, tiny  # noqa: F401  (registers them)
