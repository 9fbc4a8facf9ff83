"""Every on-disk contract of the pipeline, and atomic writes.

This is the only module that imports h5py. Each file kind has a `write_*`/`read_*` pair; every write goes to a
temporary name in the destination folder and is renamed into place only when complete, so an interrupted job
never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from pipeline import __version__

if TYPE_CHECKING:
    import h5py

# h5py is imported where a file is read or written, so the workflow's DAG-time imports (paths, sheets) stay light.
PathLike = str | os.PathLike
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a job killed mid-write leaves its temporary file; one writer per destination (Snakemake's guarantee)
    # means any such leftover is stale by the time the rerun writes again
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(dest: PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(dest: PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: PathLike, obj: Any) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, and paths, as plain JSON (json.dumps's `default`)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """h5 attrs accept scalars, strings and arrays; None becomes '' and dicts become JSON."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            value = ""
        elif isinstance(value, (dict, list, tuple)) and not (
            isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value)
        ):
            value = json.dumps(value, default=json_default)
        elif isinstance(value, Path):
            value = str(value)
        out[key] = value
    return out


def _decode_attrs(attrs: "h5py.AttributeManager") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def write_h5(dest: PathLike, datasets: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write datasets and attrs to `dest` atomically; attrs always record the package version."""
    with atomic_path(dest) as tmp:
        import h5py

        with h5py.File(tmp, "w") as f:
            for name, array in datasets.items():
                f.create_dataset(name, data=np.asarray(array))
            f.attrs.update(_clean_attrs({"hive_wsi_version": __version__, **attrs}))


def read_h5(path: PathLike, names: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read datasets (all, or those named) and attrs. A missing dataset is a clear error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    import h5py

    with h5py.File(path, "r") as f:
        wanted = list(f.keys()) if names is None else names
        missing = [n for n in wanted if n not in f]
        if missing:
            raise KeyError(f"{path}: missing dataset(s) {missing}; has {sorted(f.keys())}")
        data = {n: f[n][()] for n in wanted}
        attrs = _decode_attrs(f.attrs)
    return data, attrs


#: a 5x patch covers exactly a CHILDREN_PER_SIDE x CHILDREN_PER_SIDE block of 20x patches; hierarchical files
#: have one slot per child, row-major in that block.
CHILDREN_PER_SIDE = 4
CHILDREN_PER_PARENT = CHILDREN_PER_SIDE * CHILDREN_PER_SIDE


# --- patches/{slide}.h5 ------------------------------------------------------------------------------------


@dataclass
class PatchGrid:
    """Aligned 5x/20x patch coordinates of one slide (level-0 top-left x, y)."""

    coords_5x: np.ndarray  # [N, 2] int64
    coords_20x: np.ndarray  # [M, 2] int64
    parent_of_20x: np.ndarray  # [M] int64, row in coords_5x
    attrs: dict[str, Any] = field(default_factory=dict)


def write_patches(dest: PathLike, grid: PatchGrid) -> None:
    write_h5(
        dest,
        {
            "coords_5x": np.asarray(grid.coords_5x, dtype=np.int64).reshape(-1, 2),
            "coords_20x": np.asarray(grid.coords_20x, dtype=np.int64).reshape(-1, 2),
            "parent_of_20x": np.asarray(grid.parent_of_20x, dtype=np.int64).reshape(-1),
        },
        grid.attrs,
    )


def read_patches(path: PathLike) -> PatchGrid:
    data, attrs = read_h5(path, ["coords_5x", "coords_20x", "parent_of_20x"])
    return PatchGrid(data["coords_5x"], data["coords_20x"], data["parent_of_20x"], attrs)


# --- features/{backbone}/{backbone}_{5x,20x}/{slide}.h5 --------------------------------------------------


def write_features(dest: PathLike, features: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any]) -> None:
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(features) != len(coords):
        raise ValueError(f"{dest}: {len(features)} feature rows but {len(coords)} coords rows")
    write_h5(dest, {"features": features, "coords": coords}, attrs)


def read_features(path: PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """`features` [N, D] and `coords` [N, 2] as CLAM, TRIDENT and HiVE-MIL write them, plus attrs."""
    data, attrs = read_h5(path, ["features", "coords"])
    return data["features"], data["coords"], attrs


# --- features/{backbone}/hierarchical_{backbone}_5x_20x/{slide}.h5 ---------------------------------------


def write_hierarchical(
    dest: PathLike, features: np.ndarray, coords: np.ndarray, mask: np.ndarray, attrs: Mapping[str, Any]
) -> None:
    """`features` [N,16,D] float32, `coords` [N,16,2] int64, `mask` [N,16] bool (HiVE-MIL's layout + mask)."""
    write_h5(
        dest,
        {
            "features": np.asarray(features, dtype=np.float32),
            "coords": np.asarray(coords, dtype=np.int64),
            "mask": np.asarray(mask, dtype=bool),
        },
        attrs,
    )


def read_hierarchical(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read a hierarchical file; `mask` is None for HiVE-MIL's published files, which have none."""
    path = Path(path)
    import h5py

    with h5py.File(path, "r") as f:
        has_mask = "mask" in f
    names = ["features", "coords"] + (["mask"] if has_mask else [])
    data, attrs = read_h5(path, names)
    return data["features"], data["coords"], data.get("mask"), attrs


# --- text embeddings: features/{backbone}/text_{task}.h5 (pipeline.wiring.layout) -----------------------------------------------


@dataclass
class TextEmbeddings:
    """Encoded prompts: `embeddings` [C, E, D] float32 (E texts per class, file order), with the texts."""

    embeddings: np.ndarray
    classes: list[str]
    texts: list[list[str]]
    attrs: dict[str, Any] = field(default_factory=dict)


def write_text_embeddings(dest: PathLike, emb: TextEmbeddings) -> None:
    embeddings = np.asarray(emb.embeddings, dtype=np.float32)
    if embeddings.ndim != 3 or embeddings.shape[0] != len(emb.classes):
        raise ValueError(f"{dest}: embeddings {embeddings.shape} do not match {len(emb.classes)} classes")
    if [len(t) for t in emb.texts] != [embeddings.shape[1]] * len(emb.classes):
        raise ValueError(f"{dest}: every class needs {embeddings.shape[1]} texts")
    attrs = {**emb.attrs, "classes": json.dumps(list(emb.classes)), "texts": json.dumps([list(t) for t in emb.texts])}
    write_h5(dest, {"embeddings": embeddings}, attrs)


def read_text_embeddings(path: PathLike) -> TextEmbeddings:
    data, attrs = read_h5(path, ["embeddings"])
    classes = json.loads(attrs.pop("classes"))
    texts = json.loads(attrs.pop("texts"))
    return TextEmbeddings(data["embeddings"], classes, texts, attrs)


# --- the HLSS tile pool: pretrain/tiles.h5 (pipeline.wiring.layout.PRETRAIN_TILES) ------------------------------------


@dataclass
class TilePoolIndex:
    """What a tile pool holds, without its pixels: tile i is 20x patch `coords[i]` of slide `slide_ids[slide_of[i]]`,
    whose patient is `case_ids[slide_of[i]]`."""

    slide_ids: list[str]
    case_ids: list[str]
    slide_of: np.ndarray  # [N] int64
    coords: np.ndarray  # [N, 2] int64, level 0
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slide_of)


def write_tile_pool(
    dest: PathLike,
    slides: "Iterator[tuple[str, str, np.ndarray, np.ndarray]]",
    patch_size: int,
    attrs: Mapping[str, Any],
) -> TilePoolIndex:
    """Stream (slide_id, case_id, tiles [n, S, S, 3] uint8, coords [n, 2]) per slide into one h5, atomically.

    Tiles go to disk slide by slide (one chunk per tile), so a cohort's pool never has to fit in memory.
    """
    slide_ids: list[str] = []
    case_ids: list[str] = []
    slide_of: list[np.ndarray] = []
    coords: list[np.ndarray] = []
    with atomic_path(dest) as tmp:
        import h5py

        with h5py.File(tmp, "w") as f:
            tiles = f.create_dataset("tiles", shape=(0, patch_size, patch_size, 3), maxshape=(None, patch_size,
                                     patch_size, 3), dtype=np.uint8, chunks=(1, patch_size, patch_size, 3))
            for slide_id, case_id, slide_tiles, slide_coords in slides:
                if slide_tiles.shape[1:] != (patch_size, patch_size, 3) or slide_tiles.dtype != np.uint8:
                    raise ValueError(f"slide '{slide_id}': tiles {slide_tiles.shape} {slide_tiles.dtype} are not "
                                     f"[n, {patch_size}, {patch_size}, 3] uint8")
                start = tiles.shape[0]
                tiles.resize(start + len(slide_tiles), axis=0)
                tiles[start:] = slide_tiles
                slide_of.append(np.full(len(slide_tiles), len(slide_ids), np.int64))
                coords.append(np.asarray(slide_coords, np.int64).reshape(-1, 2))
                slide_ids.append(slide_id)
                case_ids.append(case_id)
            index = TilePoolIndex(
                slide_ids, case_ids,
                np.concatenate(slide_of) if slide_of else np.zeros(0, np.int64),
                np.concatenate(coords) if coords else np.zeros((0, 2), np.int64),
                dict(attrs),
            )
            f.create_dataset("slide_of", data=index.slide_of)
            f.create_dataset("coords", data=index.coords)
            f.attrs.update(_clean_attrs({
                "hive_wsi_version": __version__, **attrs, "patch_size": patch_size,
                "slide_ids": json.dumps(slide_ids), "case_ids": json.dumps(case_ids),
            }))
    return index


def read_tile_pool_index(path: PathLike) -> TilePoolIndex:
    data, attrs = read_h5(path, ["slide_of", "coords"])
    slide_ids = json.loads(attrs.pop("slide_ids"))
    case_ids = json.loads(attrs.pop("case_ids"))
    return TilePoolIndex(slide_ids, case_ids, data["slide_of"], data["coords"], attrs)


class TileReader:
    """Random access to a tile pool's pixels (one open file; use as a context manager)."""

    def __init__(self, path: PathLike):
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        self._tiles = self._file["tiles"]

    def __enter__(self) -> "TileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Tiles [len(indices), S, S, 3] uint8 in the order given (repeats allowed)."""
        indices = np.asarray(indices, np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._tiles[unique][inverse] if len(unique) else np.zeros((0, *self._tiles.shape[1:]), np.uint8)
