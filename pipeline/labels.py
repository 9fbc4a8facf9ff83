"""Label trees: coarse classes over fine ones (organ -> subtype), checked once and shared by every stage.

A task's `tree: {coarse: [fine, ...]}` says which fine label (the cohort sheet's) lies under which coarse class.
A `hierarchical` task predicts both levels; a `classification` task with a tree predicts the coarse level from
sheets labelled at the fine one. Standard library only: the workflow reads trees while it builds the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class LabelTree:
    """Coarse classes in order, fine classes in order (grouped by coarse), and each fine class's coarse parent."""

    coarse: tuple[str, ...]
    fine: tuple[str, ...]
    parent: tuple[int, ...]  # fine index -> coarse index

    @classmethod
    def from_mapping(cls, tree: Mapping[str, Sequence[str]], where: str = "label tree") -> "LabelTree":
        """Check and build: every coarse class has fine labels, and every fine label lies under exactly one."""
        if not tree:
            raise PipelineError(f"{where}: the tree is empty; give it as {{coarse: [fine, ...], ...}}")
        owners: dict[str, list[str]] = {}
        for coarse, fines in tree.items():
            if isinstance(fines, str) or not fines:
                raise PipelineError(f"{where}: coarse class '{coarse}' needs a list of fine labels, got {fines!r}")
            for fine in fines:
                owners.setdefault(str(fine), []).append(str(coarse))
        shared = {f: c for f, c in owners.items() if len(c) > 1}
        if shared:
            listed = "; ".join(f"'{f}' under {c}" for f, c in shared.items())
            raise PipelineError(f"{where}: each fine label must lie under exactly one coarse class: {listed}")
        clash = sorted(set(owners) & set(map(str, tree)))
        if clash:
            raise PipelineError(f"{where}: label(s) {clash} are both a coarse class and a fine label")
        coarse = tuple(str(c) for c in tree)
        fine = tuple(str(f) for fines in tree.values() for f in fines)
        parent = tuple(coarse.index(owners[f][0]) for f in fine)
        return cls(coarse, fine, parent)

    def coarse_of(self, fine: str) -> str:
        return self.coarse[self.parent[self.fine.index(fine)]]

    def children(self, coarse_index: int) -> list[int]:
        return [j for j, p in enumerate(self.parent) if p == coarse_index]

    def as_mapping(self) -> dict[str, list[str]]:
        return {c: [self.fine[j] for j in self.children(i)] for i, c in enumerate(self.coarse)}

    def to_args(self) -> list[str]:
        """CLI form: one `coarse=fine1,fine2` item per coarse class (see `parse_tree_args`)."""
        return [f"{c}={','.join(fines)}" for c, fines in self.as_mapping().items()]


def parse_tree_args(items: Sequence[str], where: str = "--label-tree") -> LabelTree | None:
    """`["lung=LUAD,LUSC", "kidney=CCRCC,PRCC"]` -> a tree; no items -> None."""
    if not items:
        return None
    tree: dict[str, list[str]] = {}
    for item in items:
        coarse, sep, fines = item.partition("=")
        if not sep or not coarse or not fines:
            raise PipelineError(f"{where}: expected coarse=fine1,fine2,..., got {item!r}")
        if coarse in tree:
            raise PipelineError(f"{where}: coarse class '{coarse}' is given twice")
        tree[coarse] = [f for f in fines.split(",") if f]
    return LabelTree.from_mapping(tree, where)
