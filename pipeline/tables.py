"""Result tables as files: csv with a fixed float format and a markdown table under a title, shared by the
training, survival and pretraining reports."""

from __future__ import annotations

import pandas as pd

from pipeline.formats import PathLike, write_text_atomic


def write_csv(path: PathLike, frame: pd.DataFrame) -> None:
    """`frame` without its index, floats to 6 significant digits, written atomically."""
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.6g"))


def markdown(table: pd.DataFrame, title: str) -> str:
    """`# title` and the table in GitHub markdown, values as `str` gives them."""
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return f"# {title}\n\n{header}{body}"
