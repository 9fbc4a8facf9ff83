"""Model architectures behind the registered backbones (pipeline.features.backbones): the Backbone interface,
open_clip CLIP towers and the CoCa-style CONCH model. Nothing here registers a name."""

from __future__ import annotations

import sys
from types import ModuleType


def import_open_clip() -> ModuleType:
    """open_clip, imported without Hugging Face transformers, which it loads eagerly only for HF text towers
    (none of ours): that import is a large share of an extract job's start-up. transformers stays importable
    afterwards for the code that needs it (CONCH's tokenizer)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    block = "transformers" not in sys.modules
    if block:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # makes `import transformers` fail fast
    try:
        import open_clip
    finally:
        if block and sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]
    return open_clip
