"""What a backbone is (its cfg) and what its builder is given: plain data, below the registry, the weights loader
and the architectures, which all read it (so none of them imports another to get it). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

#: CLIP's published normalisation constants (OpenAI), used by PLIP, QuiltNet and CONCH alike.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: the value of `weights` that asks for random initialisation (never a default).
RANDOM = "random"


@dataclass(frozen=True)
class BackboneCfg:
    """What a backbone is and how its inputs must look; the single source for transforms and output attrs."""

    name: str
    architecture: str  # human-readable, e.g. "CLIP ViT-B/32"
    input_size: int  # square input side in px
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # resize of a patch to input_size: "bicubic" or "bilinear"
    embed_dim: int = 512  # joint image-text embedding size D
    hub_id: str | None = None  # Hugging Face repo of the published weights (None: there are none)
    hub_filename: str | None = None  # weights file inside hub_id
    licence: str = ""
    precision: str = "bf16"  # autocast dtype on a GPU ("bf16", "fp16" or "fp32"); the CPU always runs fp32
    normalize_image: bool = False  # L2-normalise image embeddings (CONCH's contrastive head does)
    quick_gelu: bool = False  # CLIP-family activation (OpenAI-initialised weights use QuickGELU)
    paper: str = ""

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"backbone '{self.name}': interpolation must be bicubic or bilinear, got {self.interpolation!r}"
            )
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"backbone '{self.name}': precision must be bf16, fp16 or fp32, got {self.precision!r}")
        if self.input_size < 16:
            raise ValueError(f"backbone '{self.name}': input_size {self.input_size} is too small")


@dataclass(frozen=True)
class BuildContext:
    """What a builder needs besides the cfg: a tokenizer file (if any) and whether the weights are random."""

    tokenizer: str | None = None
    random_weights: bool = False
