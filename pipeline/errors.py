"""Exceptions that carry a user-facing message naming the slide and the reason."""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure (bad input, bad config): the CLI prints the message, no traceback."""


class SlideError(PipelineError):
    """A slide cannot be processed; the message names the slide and the reason."""

    def __init__(self, slide: str, reason: str):
        self.slide = slide
        self.reason = reason
        super().__init__(f"slide '{slide}': {reason}")
