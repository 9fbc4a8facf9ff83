"""Synthetic cohorts on disk for the tests: sheets, feature files in the pipeline's layout, splits and prompt files.

One place for what several test modules used to write each in their own way: a dataset.csv of cases and slides,
5x feature files with their hierarchical 20x children (4x4 per 5x patch, the workflow's geometry), placeholder
patch/feature files for the dataset stage, and the three seeded cohorts the training tests learn from. The seeded
writers draw their random numbers in a fixed order: tests pin numbers on them (tests/data/pinned_training_metrics
.json, the survival and HLSS evaluation checks), so a change here that moves a draw changes those numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.formats import (
    PatchGrid,
    TextEmbeddings,
    write_features,
    write_h5,
    write_hierarchical,
    write_patches,
    write_text_embeddings,
)

#: 20x patch size (px at 20x); a 5x patch covers 4x4 of them
PATCH_20X = 256
#: (x, y) offsets, in 20x patches, of the 16 children of a 5x patch, in the pipeline's child order (row-major in y)
CHILD_OFFSETS = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(16, 2)[:, ::-1]
#: the two classes of the synthetic classification cohorts
CLASSES = ("alpha", "beta")


# --- geometry and small files -----------------------------------------------------------------------------------


def row_coords_5x(n: int) -> np.ndarray:
    """Level-0 coords of `n` 5x patches side by side in one row (1024 px apart), int64 [n, 2]."""
    return np.stack([np.arange(n) * 1024, np.zeros(n)], 1).astype(np.int64)


def child_coords(coords_5x: np.ndarray) -> np.ndarray:
    """The 20x children's coords [n, 16, 2] of 5x patches at `coords_5x`."""
    return coords_5x[:, None, :] + CHILD_OFFSETS[None] * PATCH_20X


def write_dataset(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """dataset.csv (or any sheet) from row dicts, columns in first-row order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_csv(path, index=False)
    return path


def write_case_sheet(path: Path, case_sizes: Mapping[str, Sequence[int]]) -> Path:
    """dataset.csv with, per label, cases of the given slide counts (e.g. {"A": [1, 2, 3]}); slides are
    `{label}-case{i:03d}-s{j}`, all 40x."""
    rows = []
    for label, sizes in case_sizes.items():
        for ci, size in enumerate(sizes):
            case = f"{label}-case{ci:03d}"
            rows += [{"case_id": case, "slide_id": f"{case}-s{si}", "label": label, "level0_mag": 40}
                     for si in range(size)]  # fmt: skip
    return write_dataset(path, rows)


def write_placeholder_patches(path: Path, n: int = 1, **attrs: Any) -> Path:
    """A patch file of `n` patches at the origin with `attrs` (mpp, level0_magnification, empty_reason ...): what
    the dataset stage reads of a slide, without a slide."""
    write_patches(path, PatchGrid(np.zeros((n, 2)), np.zeros((n, 2)), np.zeros(n), attrs))
    return path


def write_placeholder_features(f5: Path, hierarchical: Path | None = None, n: int = 1, dim: int = 4) -> None:
    """A 5x feature file of `n` all-ones rows and, unless None, its hierarchical file (every child present)."""
    write_features(f5, np.ones((n, dim)), np.zeros((n, 2)), {})
    if hierarchical is not None:
        write_hierarchical(hierarchical, np.ones((n, 16, dim)), np.zeros((n, 16, 2)), np.ones((n, 16), bool), {})


def prompt_json(classes: Sequence[str] = CLASSES) -> dict[str, dict[str, str]]:
    """HiVE-MIL-style prompts: per class 4 coarse terms, then 12 fine ones (three under each coarse one)."""
    out = {}
    for c in classes:
        entries = {f"{c} coarse {i}": f"coarse look {i} of {c} tissue" for i in range(4)}
        entries.update({f"{c} fine {j}": f"detail {j} under coarse {j // 3} of {c}" for j in range(12)})
        out[c] = entries
    return out


def write_prompt_file(path: Path, classes: Sequence[str] = CLASSES, blank_lines: int = 0) -> Path:
    """prompt_json as indented JSON; `blank_lines` blank lines after the first entries, as HiVE-MIL's files have
    between groups (key order, not layout, carries the hierarchy)."""
    text = json.dumps(prompt_json(classes), indent=2)
    if blank_lines:
        text = text.replace('",\n', '",\n\n', blank_lines)
    path.write_text(text)
    return path


def write_slide_features(f5: Path, hierarchical: Path, x5: np.ndarray, x20: np.ndarray, mask: np.ndarray,
                         coords_5x: np.ndarray, hive_layout: bool = False) -> None:
    """A slide's 5x features and hierarchical 20x file; `hive_layout`: HiVE-MIL's published hierarchical files
    (features float32 and coords only, no mask)."""
    write_features(f5, x5, coords_5x, {})
    if hive_layout:
        write_h5(hierarchical, {"features": x20.astype(np.float32), "coords": child_coords(coords_5x)}, {})
    else:
        write_hierarchical(hierarchical, x20, child_coords(coords_5x), mask, {})


# --- the seeded cohorts the training tests learn from ------------------------------------------------------------


def write_classification_cohort(root: Path, backbone_name: str = "tiny", dim: int = 32, n_train: int = 4,
                                n_val: int = 2, n_test: int = 6, hive_layout: bool = False, signal: float = 1.5,
                                seed: int = 0) -> Path:
    """Two classes (CLASSES) whose patches lean towards a class prototype; one fold (splits/synthetic_4/
    splits_0.csv), features under features/{backbone}_5x and hierarchical_{backbone}_5x_20x, prompts.json.
    tests/data/pinned_training_metrics.json pins training on this cohort."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(size=(2, dim))
    rows, parts = [], {"train": [], "val": [], "test": []}
    for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for c, cls in enumerate(CLASSES):
            for i in range(n):
                sid = f"{part}-{cls}-{i}"
                rows.append({"case_id": f"case-{sid}", "slide_id": sid, "label": cls, "level0_mag": 40})
                parts[part].append(sid)
                n5 = int(rng.integers(6, 12))
                x5 = rng.normal(size=(n5, dim)) + signal * proto[c]
                x20 = x5[:, None, :] + 0.5 * rng.normal(size=(n5, 16, dim))
                mask = rng.random((n5, 16)) > 0.3
                mask[:, 0] = True
                x20[~mask] = 0.0
                write_slide_features(root / "features" / f"{backbone_name}_5x" / f"{sid}.h5",
                                     root / "features" / f"hierarchical_{backbone_name}_5x_20x" / f"{sid}.h5",
                                     x5, x20, mask, row_coords_5x(n5), hive_layout)  # fmt: skip
    write_dataset(root / "dataset.csv", rows)
    split_dir = root / "splits" / "synthetic_4"
    split_dir.mkdir(parents=True)
    longest = max(len(v) for v in parts.values())
    lines = [",train,val,test"] + [
        f"{i}," + ",".join(parts[p][i] if i < len(parts[p]) else "" for p in ("train", "val", "test"))
        for i in range(longest)
    ]
    (split_dir / "splits_0.csv").write_text("\n".join(lines) + "\n")
    write_prompt_file(root / "prompts.json", blank_lines=3)
    return root


def write_survival_cohort(root: Path, dim: int = 32, n_patients: int = 90, seed: int = 0,
                          two_slide_every: int = 5) -> dict[str, np.ndarray]:
    """Patients with a latent risk r ~ N(0, 1): the share of 20x children (and their 5x parents) pulled towards a
    direction u grows with r; T ~ Exp(rate e^{2r}) x 300 days, C ~ Uniform(0, 900) days. Every fifth patient has
    two slides. Writes f5/ and fh/ feature files, dataset.csv (with event,time_days) and the demo's attribute
    prompts; returns the truth (risk, event, time per patient)."""
    from pipeline.prompt_files import shipped_prompt_files

    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    risk = rng.normal(size=n_patients)
    death = rng.exponential(1.0 / np.exp(2 * risk)) * 300
    censor = rng.uniform(0, 900, n_patients)
    event, time = (death <= censor).astype(int), np.round(np.minimum(death, censor)) + 1
    rows = []
    for p in range(n_patients):
        case = f"P{p:03d}"
        for s in range(2 if p % two_slide_every == 0 else 1):
            sid = f"{case}-S{s}"
            n5 = int(rng.integers(8, 16))
            mask = rng.random((n5, 16)) > 0.2
            mask[:, 0] = True
            aligned = rng.random((n5, 16)) < 1 / (1 + np.exp(-2 * risk[p]))
            x20 = rng.normal(size=(n5, 16, dim)) + 3.0 * aligned[..., None] * u
            x20[~mask] = 0.0
            x5 = x20.sum(1) / mask.sum(1, keepdims=True) + 0.3 * rng.normal(size=(n5, dim))
            write_slide_features(root / "f5" / f"{sid}.h5", root / "fh" / f"{sid}.h5", x5, x20, mask,
                                 row_coords_5x(n5))  # fmt: skip
            rows.append({"case_id": case, "slide_id": sid, "label": "tumour", "level0_mag": 20,
                         "event": event[p], "time_days": time[p]})  # fmt: skip
    write_dataset(root / "dataset.csv", rows)
    shutil.copy(shipped_prompt_files()["demo_survival"], root / "prompts.json")
    return {"risk": risk, "event": event, "time": time}


#: a backbone's files as write_backbone_files returns them: {"5x" | "hier" | "20x": [paths]}, its text file
BackboneFiles = tuple[dict[str, list[str]], Path]


def write_backbone_files(root: Path, name: str, slides: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                         transform: Callable[[np.ndarray], np.ndarray], texts: np.ndarray,
                         skip: Sequence[str] = (), shift: Sequence[str] = ()) -> BackboneFiles:
    """One backbone's 5x, hierarchical and flat 20x files under root/{name}/ of `slides` {slide_id: (x5, x20,
    mask)}, features through `transform`, and its text file of `texts` [C, 16, D] (prompt_json's terms) as given.
    Slides in `skip` get no files; those in `shift` get 20x coords one pixel off (patches that do not match)."""
    files: dict[str, list[str]] = {"5x": [], "hier": [], "20x": []}
    for sid, (x5, x20, mask) in slides.items():
        if sid in skip:
            continue
        coords5 = row_coords_5x(len(x5))
        x5, x20 = transform(x5), np.where(mask[..., None], transform(x20), 0.0)
        paths = {kind: root / name / kind / f"{sid}.h5" for kind in files}
        write_slide_features(paths["5x"], paths["hier"], x5, x20, mask, coords5)
        flat_coords = child_coords(coords5)[mask] + (1 if sid in shift else 0)
        write_features(paths["20x"], x20[mask], flat_coords, {"magnification": "20x"})
        for kind in files:
            files[kind].append(str(paths[kind]))
    prompts = prompt_json()
    text_file = root / name / "text_synthetic.h5"
    write_text_embeddings(text_file, TextEmbeddings(
        texts.astype(np.float32), list(CLASSES),
        [[f"{term}: {expl}" for term, expl in prompts[c].items()] for c in CLASSES], {"logit_scale": 50.0},
    ))  # fmt: skip
    return files, text_file


def write_rotated_cohort(root: Path, dim: int = 16, skip_after: Sequence[str] = (),
                         shift_after: Sequence[str] = ()) -> tuple[BackboneFiles, BackboneFiles]:
    """Two classes, 8 patients with 1-2 slides (13 in all) and another task's slide in dataset.csv; backbone
    'tiny' (before) and 'tiny_hlss' (after), whose features are a rotation of tiny's (every cosine kept) while its
    texts are not rotated (their alignment with the image features is lost). Returns (before, after)."""
    rng = np.random.default_rng(0)
    protos = 2 * np.eye(2, dim)
    slides, rows = {}, []
    for p in range(8):
        c = p % 2
        for s in range(1 + p % 2 + (p == 0)):
            sid = f"case{p}-slide{s}"
            x5 = protos[c] + 0.7 * rng.normal(size=(5, dim))
            x20 = x5[:, None, :] + 0.7 * rng.normal(size=(5, 16, dim))
            mask = rng.random((5, 16)) > 0.3
            mask[:, 0] = True
            slides[sid] = (x5, x20, mask)
            rows.append({"case_id": f"case{p}", "slide_id": sid, "label": CLASSES[c]})
    rows.append({"case_id": "case99", "slide_id": "other-task", "label": "gamma"})  # another task's slide
    write_dataset(root / "dataset.csv", rows)
    write_prompt_file(root / "prompts.json")
    texts = protos[:, None, :] + 0.3 * rng.normal(size=(2, 16, dim))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    before = write_backbone_files(root, "tiny", slides, lambda x: x, texts)
    after = write_backbone_files(root, "tiny_hlss", slides, lambda x: x @ rotation, texts, skip_after, shift_after)
    return before, after
