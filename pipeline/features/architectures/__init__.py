"""Model architectures behind the registered backbones (pipeline.features.backbones): the Backbone interface,
open_clip CLIP towers and the CoCa-style CONCH model. Nothing here registers a name."""
