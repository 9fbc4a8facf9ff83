"""The shipped methods, imported explicitly so that registering never depends on import side effects elsewhere.

A new method is one module here with a `@register_method` class (see `base.Method`), added to this import.
"""

from pipeline.training.methods import abmil, five, hila, hivemil, hmil, prompt_risk, zeroshot  # noqa: F401  (registers them)
