"""Feature extraction: backbone registry, one-read-per-parent loader, output files, checkpoints, text embeddings.

Real slides (CMU-1-Small-Region, the synthetic 40x-base pyramid of conftest's `slide_40x`, a slide with a
corrupt tile), real backbones with seeded random weights, no network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.errors import PipelineError, SlideError
from pipeline.features import create_backbone, get_backbone_cfg, list_backbones, register_backbone
from pipeline.features.architectures.base import Preprocess
from pipeline.features.backbones.hlss import vlm_of
from pipeline.features.extract import extract_features, extract_slide
from pipeline.features.loader import (
    MIN_BOX_FILL,
    GridGeometry,
    ParentDataset,
    PatchBatcher,
    child_slots,
    read_boxes,
    read_parent_patches,
)
from pipeline.features.registry import BackboneCfg
from pipeline.features.text import embed_prompts
from pipeline.features.weights import CheckpointError
from pipeline.formats import PatchGrid, read_features, read_patches, read_text_embeddings, write_patches
from pipeline.patching import PatchParams, patch_slide
from pipeline.prompt_files import load_prompts
from pipeline.slide import MppOverride, Slide, open_slide
from pipeline.tissue import TissueParams, segment_slide
from pipeline.wiring.cohort import BUNDLED_SLIDE

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "slides"
UNREADABLE = REPO / "tests" / "data" / "slides" / "unreadable.svs"
DEMO_PROMPTS = REPO / "pipeline" / "data" / "prompts" / "demo.json"
PATCH = 256


# --- fixtures --------------------------------------------------------------------------------------------


def recorded_attrs(slide: Slide) -> dict:
    """What the patch stage records about the slide and extraction reads back."""
    return {"mpp": slide.mpp, "mpp_source": slide.mpp_source, "level0_width": slide.dimensions[0],
            "level0_height": slide.dimensions[1]}



def make_grid(slide: Slide, seed: int = 0, keep: float = 0.6) -> PatchGrid:
    """An aligned grid over every whole-or-partial 5x position, a random subset of children kept (at least one per
    parent), the 20x rows shuffled so that no code may rely on children being grouped by parent. Attrs as the patch
    stage writes them: sizes, the slide's mpp and its level-0 size."""
    size, level0_mag = slide.dimensions, slide.level0_magnification
    s20 = PATCH * level0_mag // 20
    s5 = 4 * s20
    rng = np.random.default_rng(seed)
    parents, children, parent_of = [], [], []
    for y in range(0, size[1], s5):
        for x in range(0, size[0], s5):
            kept = rng.random(16) < keep
            kept[rng.integers(16)] = True
            parents.append((x, y))
            for slot in np.flatnonzero(kept):
                children.append((x + (slot % 4) * s20, y + (slot // 4) * s20))
                parent_of.append(len(parents) - 1)
    order = rng.permutation(len(children))
    attrs = {"patch_size": PATCH, "patch_size_level0_20x": s20, "patch_size_level0_5x": s5,
             "level0_magnification": level0_mag, **recorded_attrs(slide)}
    return PatchGrid(np.array(parents), np.array(children)[order], np.array(parent_of)[order], attrs)


@pytest.fixture(scope="module")
def tiny():
    return create_backbone("tiny", weights="random")


@pytest.fixture(scope="module")
def cmu_patches(tmp_path_factory) -> tuple[Path, PatchGrid]:
    with open_slide(BUNDLED_SLIDE) as slide:
        grid = make_grid(slide, seed=3)
    path = tmp_path_factory.mktemp("patches") / "cmu.h5"
    write_patches(path, grid)
    return path, grid


def word_tokenizer(path: Path, n_words: int, words: tuple[str, ...] = ()) -> str:
    """A Hugging Face tokenizer file with CONCH's special tokens, the given words, and fillers up to `n_words`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<start_of_text>": 1, "<end_of_text>": 2, "<unk>": 3}
    for word in list(dict.fromkeys(words)) + [f"w{i}" for i in range(n_words)]:
        if len(vocab) < n_words + 4:
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)]
    )
    tok.save(str(path))
    return str(path)


TEST_WORDS = tuple(
    "x glandular rings : nuclei around a pale lumen solid sheet sheets of small dark cribriform glands".split()
)


@pytest.fixture(scope="module")
def conch_tokenizer(tmp_path_factory) -> str:
    """Stands in for CONCH's own tokenizer file (not shippable here): 32007 tokens, like CONCH's vocabulary."""
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", 32003, TEST_WORDS)


@pytest.fixture(scope="module", params=[b for b in list_backbones() if not vlm_of(b) or b == "tiny_hlss"])
def random_backbone(request, conch_tokenizer):
    """Each registered VLM with random weights, built once (pytest groups the tests by backbone), and one HLSS
    variant (the others wrap their VLM the same way). CONCH gets a tokenizer file of its real vocabulary size, as
    it would with its published weights."""
    name = request.param
    backbone = create_backbone(name, weights="random", tokenizer=conch_tokenizer if name == "conch" else None)
    yield backbone
    del backbone


# --- (1) the loader's crops equal direct reads ---------------------------------------------------------


@pytest.mark.parametrize("which,keep", [("cmu", 0.3), ("synthetic40x", 1.0), ("synthetic40x", 0.3)])
def test_children_and_parent_equal_direct_reads(which, keep, slide_40x):
    """Whether a parent's children are read as one box or as runs, each equals the single-patch read at its
    coordinates, and the 5x patch is the slide's own 5x read (from the pyramid level made for it)."""
    path = BUNDLED_SLIDE if which == "cmu" else slide_40x
    with open_slide(path) as slide:
        grid = make_grid(slide, keep=keep)
        g = GridGeometry.from_grid(grid, slide.slide_id)
        assert g.s20 == PATCH * slide.level0_magnification // 20
        mismatched, shapes = [], set()
        for i, (x, y) in enumerate(grid.coords_5x):
            rows = np.flatnonzero(grid.parent_of_20x == i)
            slots = child_slots(grid.coords_5x[i], grid.coords_20x[rows], g.s20, "s")
            shapes.add(len(read_boxes(slots)))
            five, crops, decoded = read_parent_patches(slide, x, y, slots, g)
            level20, side20 = slide.level_for(g.s20, PATCH)
            assert decoded >= len(slots) * side20**2
            for crop, (cx, cy) in zip(crops, grid.coords_20x[rows]):
                np.testing.assert_array_equal(crop, slide.read_region_scaled(cx, cy, g.s20, PATCH))
                other = slide.read_region_scaled(cx + g.s20, cy, g.s20, PATCH)  # guards against the wrong place
                if crop.std() > 10 and other.std() > 10:
                    mismatched.append(np.abs(crop.astype(int) - other).mean())
            np.testing.assert_array_equal(five, slide.read_region_scaled(x, y, g.s5, PATCH))
        assert mismatched and np.median(mismatched) > 5
        if keep < 1 and slide.level_for(g.s5, PATCH)[0] != level20:
            assert max(shapes) > 1  # some parents were read as several runs


def test_read_boxes_cover_exactly_the_kept_slots():
    assert read_boxes(np.arange(16)) == [(0, 4, 0, 4)]  # a full parent: one read
    assert read_boxes(np.array([5, 6, 9, 10])) == [(1, 3, 1, 3)]  # a dense 2x2 block: its box
    assert read_boxes(np.array([0, 15])) == [(0, 1, 0, 1), (3, 4, 3, 4)]  # opposite corners: one read each
    assert read_boxes(np.array([0, 1, 2, 12])) == [(0, 1, 0, 3), (3, 4, 0, 1)]  # a run, and a lone child
    assert read_boxes(np.array([], np.int64)) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        slots = np.flatnonzero(rng.random(16) < rng.random())
        cells = {(r, c) for r0, r1, c0, c1 in read_boxes(slots) for r in range(r0, r1) for c in range(c0, c1)}
        assert {divmod(int(s), 4) for s in slots} <= cells
        assert len(cells) <= max(len(slots) / MIN_BOX_FILL, len(slots))  # never more than twice what is kept


def test_child_slots_are_row_major_and_reject_misalignment():
    parent = np.array([1024, 2048])
    kids = np.array([[1024, 2048], [1024 + 3 * 256, 2048], [1024, 2048 + 256], [1024 + 768, 2048 + 768]])
    assert child_slots(parent, kids, 256, "s").tolist() == [0, 3, 4, 15]
    with pytest.raises(SlideError, match="not on the 4x4 grid"):
        child_slots(parent, np.array([[1024 + 100, 2048]]), 256, "s")
    with pytest.raises(SlideError, match="not on the 4x4 grid"):
        child_slots(parent, np.array([[1024 + 1024, 2048]]), 256, "s")


def test_dataset_item_holds_resized_children_in_row_order(tiny, cmu_patches):
    _, grid = cmu_patches
    ds = ParentDataset(BUNDLED_SLIDE, "cmu", grid, tiny.preprocess)
    item = ds[1]
    (images,) = item["images"]  # one preprocessing
    rows = item["rows_20x"]
    assert sorted(rows) == sorted(np.flatnonzero(grid.parent_of_20x == 1))
    with open_slide(BUNDLED_SLIDE) as slide:
        x, y = grid.coords_5x[1]
        assert torch.equal(images[0], tiny.preprocess.resize(slide.read_region_scaled(x, y, 1024, PATCH)))
        for k, row in enumerate(rows):
            cx, cy = grid.coords_20x[row]
            expected = tiny.preprocess.resize(slide.read_region_scaled(cx, cy, 256, PATCH))
            assert torch.equal(images[1 + k], expected)
    assert images.shape == (1 + len(rows), 3, 112, 112) and images.dtype == torch.uint8
    ds.close()


def test_batcher_fills_every_batch_and_keeps_each_images_row():
    """Parents of 1-17 images cut into batches of exactly 10 (the last fewer), each image tagged with its row."""
    rng = np.random.default_rng(1)
    batcher, batches, offset = PatchBatcher(10), [], 0
    items = []
    for i in range(9):
        n20 = int(rng.integers(0, 17))
        rows = np.arange(offset, offset + n20)
        offset += n20
        images = torch.tensor([1000 * i] + [int(r) for r in rows]).view(-1, 1, 1, 1)  # 5x: 1000 i; 20x: its row
        items.append({"index": i, "images": [images, -images], "rows_20x": rows})
        batches += list(batcher.add(items[-1]))
    batches += list(batcher.flush())
    sizes = [len(b.images[0]) for b in batches]
    assert all(n == 10 for n in sizes[:-1]) and 0 < sizes[-1] <= 10 and sum(sizes) == 9 + offset
    for b in batches:
        assert torch.equal(b.images[1], -b.images[0])  # each preprocessing's images follow the same rows
        values = b.images[0].view(-1).numpy()
        np.testing.assert_array_equal(values[b.is_5x], 1000 * b.rows[b.is_5x])
        np.testing.assert_array_equal(values[~b.is_5x], b.rows[~b.is_5x])


# --- (2)-(3) batched = alone, deterministic files, output contract ----------------------------------------


def test_batched_features_equal_single_patch_features(tiny, cmu_patches):
    _, grid = cmu_patches
    out = extract_features(tiny, BUNDLED_SLIDE, "cmu", grid, batch_size=40, device="cpu", progress=False)
    with open_slide(BUNDLED_SLIDE) as slide, torch.inference_mode():
        for i in (0, len(grid.coords_5x) - 1):
            x, y = grid.coords_5x[i]
            alone = tiny.encode_image(tiny.transform(slide.read_region_scaled(x, y, 1024, PATCH))[None])[0]
            np.testing.assert_allclose(out.features_5x[i], alone.numpy(), rtol=1e-4, atol=1e-4)
        for j in (0, 7, len(grid.coords_20x) - 1):
            cx, cy = grid.coords_20x[j]
            alone = tiny.encode_image(tiny.transform(slide.read_region_scaled(cx, cy, 256, PATCH))[None])[0]
            np.testing.assert_allclose(out.features_20x[j], alone.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(out.features_20x[0], out.features_20x[-1])


def test_loading_modes_write_identical_files_that_follow_the_contract(tmp_path, cmu_patches):
    """Inline, one decode thread (auto on the CPU) and two worker processes: byte-identical files."""
    patches, grid = cmu_patches
    runs = []
    for run, workers in (("a", 0), ("b", "auto"), ("c", 2)):
        res = extract_slide(BUNDLED_SLIDE, patches, tmp_path / run / "f5.h5", tmp_path / run / "f20.h5", "tiny",
                            weights="random", batch_size=24, num_workers=workers, device="cpu", progress=False)
        runs.append(res)
    for name in ("f5.h5", "f20.h5"):
        digests = {hashlib.sha256((tmp_path / r / name).read_bytes()).digest() for r in "abc"}
        assert len(digests) == 1, name
    f5, c5, a5 = read_features(tmp_path / "a" / "f5.h5")
    f20, c20, a20 = read_features(tmp_path / "a" / "f20.h5")
    assert f5.dtype == np.float32 and f5.shape == (len(grid.coords_5x), 512)
    assert f20.dtype == np.float32 and f20.shape == (len(grid.coords_20x), 512)
    assert c5.dtype == np.int64 and c20.dtype == np.int64
    np.testing.assert_array_equal(c5, grid.coords_5x)
    np.testing.assert_array_equal(c20, grid.coords_20x)  # row i is the patch at coords i (shuffled order kept)
    for attrs, mag in ((a5, "5x"), (a20, "20x")):
        assert attrs["backbone"] == "tiny" and attrs["weights"] == "random" and attrs["magnification"] == mag
        assert attrs["input_size"] == 112 and attrs["embed_dim"] == 512 and attrs["n_blank_patches"] == 0
        assert np.allclose(attrs["mean"], get_backbone_cfg("tiny").mean) and attrs["hive_wsi_version"]
        assert attrs["precision"] == "fp32" and attrs["mpp_source"] == "openslide.mpp-x"
        assert attrs["reader"] == "tiffslide"  # what auto chose for an Aperio SVS
    assert a20["patch_size_level0"] == 256 and a5["patch_size_level0"] == 1024
    assert runs[0].n_20x == len(grid.coords_20x)


def test_a_chunk_job_equals_single_runs_and_keeps_going(tmp_path, cmu_patches):
    """extract-chunk: two good slides and a damaged one, two backbones, one process; each good slide's files equal
    single-slide single-backbone runs, the damaged one leaves its reason, and take-features places or fails each
    slide alone."""
    from pipeline.cli import main
    from pipeline.features.chunks import chunk_features, chunks, failure_record

    patches, _ = cmu_patches
    for bb in ("tiny", "plip"):
        extract_slide(BUNDLED_SLIDE, patches, tmp_path / f"{bb}_5x.h5", tmp_path / f"{bb}_20x.h5", bb,
                      weights="random", batch_size=24, device="cpu", progress=False)
    bad = _unreadable_patches(tmp_path)
    chunk, status_dir = tmp_path / "chunk0000", tmp_path / "status"
    argv = ["extract-chunk", "--slides", str(BUNDLED_SLIDE), str(UNREADABLE), str(BUNDLED_SLIDE),
            "--slide-ids", "cmu_a", "unreadable", "cmu_b", "--patches", str(patches), str(bad), str(patches),
            "--backbones", "tiny", "plip", "--weights", "random", "random", "--tokenizers", "", "",
            "--batch-size", "24", "--device", "cpu", "--threads", "2", "--out-dir", str(chunk),
            "--status-dir", str(status_dir), "--no-progress"]
    assert main(argv) == 0  # the job succeeds: a failed slide must not take the others' files with it
    for sid in ("cmu_a", "cmu_b"):
        assert not failure_record(chunk, sid).exists()
        for bb in ("tiny", "plip"):
            f5, f20 = chunk_features(chunk, bb, sid)
            for got, want in ((f5, f"{bb}_5x.h5"), (f20, f"{bb}_20x.h5")):
                np.testing.assert_array_equal(read_features(got)[0], read_features(tmp_path / want)[0])
                assert read_features(got)[2]["backbone"] == bb
    assert "cannot read the 5x patch" in json.loads(failure_record(chunk, "unreadable").read_text())["reason"]
    assert json.loads((status_dir / "extract" / "unreadable.json").read_text())["status"] == "failed"

    out5, out20 = tmp_path / "feat" / "cmu_a_5x.h5", tmp_path / "feat" / "cmu_a_20x.h5"
    take = ["take-features", "--chunk-dir", str(chunk), "--backbone", "plip", "--out-5x", str(out5),
            "--out-20x", str(out20), "--status-dir", str(status_dir)]
    assert main(take + ["--slide-id", "cmu_a"]) == 0
    assert out5.read_bytes() == chunk_features(chunk, "plip", "cmu_a")[0].read_bytes()
    assert out5.stat().st_mtime_ns >= chunk.stat().st_mtime_ns  # up to date for Snakemake
    assert main(take + ["--slide-id", "unreadable"]) == 1
    assert "cannot read the 5x patch" in json.loads((status_dir / "extract" / "unreadable.json").read_text())["reason"]
    assert chunks(["c", "a", "b", "d", "e"], 2) == {"chunk0000": ["a", "b"], "chunk0001": ["c", "d"],
                                                    "chunk0002": ["e"]}


def test_40x_slide_features_match_direct_reads(tiny, slide_40x):
    with open_slide(slide_40x) as slide:
        grid = make_grid(slide, seed=5)
        out = extract_features(tiny, slide_40x, "syn", grid, batch_size=64, device="cpu", progress=False)
        j = 3
        cx, cy = grid.coords_20x[j]
        with torch.inference_mode():
            alone = tiny.encode_image(tiny.transform(slide.read_region_scaled(cx, cy, 512, PATCH))[None])[0]
    np.testing.assert_allclose(out.features_20x[j], alone.numpy(), rtol=1e-4, atol=1e-4)


# --- (4) corrupt tiles -----------------------------------------------------------------------------------


def _unreadable_patches(tmp_path: Path) -> Path:
    with open_slide(UNREADABLE) as slide:
        recorded = recorded_attrs(slide)
    grid = PatchGrid(np.array([[0, 0]]), np.array([[0, 0]]), np.array([0]),
                     {"patch_size": PATCH, "patch_size_level0_20x": 256, "patch_size_level0_5x": 1024, **recorded})
    write_patches(tmp_path / "unreadable.h5", grid)
    return tmp_path / "unreadable.h5"


def test_corrupt_tile_fails_the_slide_by_default(tmp_path):
    patches = _unreadable_patches(tmp_path)
    with pytest.raises(SlideError) as err:
        extract_slide(UNREADABLE, patches, tmp_path / "f5.h5", tmp_path / "f20.h5", "tiny", weights="random",
                      device="cpu", progress=False)
    message = str(err.value)
    assert "unreadable" in message and "cannot read the 5x patch at level-0 (0, 0)" in message
    assert "on_read_error" in message
    assert not (tmp_path / "f5.h5").exists() and not (tmp_path / "f20.h5").exists()


def test_corrupt_tile_blank_substitution_counts_blanks(tmp_path, tiny):
    patches = _unreadable_patches(tmp_path)
    res = extract_slide(UNREADABLE, patches, tmp_path / "f5.h5", tmp_path / "f20.h5", tiny,
                        device="cpu", on_read_error="blank", num_workers=1, progress=False)
    assert (res.blank_5x, res.blank_20x) == (1, 1)
    f20, _, attrs = read_features(tmp_path / "f20.h5")
    assert attrs["n_blank_patches"] == 1 and attrs["on_read_error"] == "blank"
    white = np.full((PATCH, PATCH, 3), 255, np.uint8)
    with torch.inference_mode():
        expected = tiny.encode_image(tiny.transform(white)[None])[0].numpy()
    np.testing.assert_allclose(f20[0], expected, rtol=1e-4, atol=1e-4)


def test_extract_command_records_status(tmp_path):
    from pipeline.cli import main

    patches = _unreadable_patches(tmp_path)
    args = ["extract", "--slide", str(UNREADABLE), "--patches", str(patches), "--backbone", "tiny", "--weights",
            "random", "--out-5x", str(tmp_path / "a.h5"), "--out-20x", str(tmp_path / "b.h5"), "--device", "cpu",
            "--status-dir", str(tmp_path / "status"), "--no-progress"]
    assert main(args) == 1
    failed = json.loads((tmp_path / "status" / "extract" / "unreadable.json").read_text())
    assert failed["status"] == "failed" and "cannot read" in failed["reason"]
    assert main(args + ["--on-read-error", "blank"]) == 0
    ok = json.loads((tmp_path / "status" / "extract" / "unreadable.json").read_text())
    assert ok["status"] == "ok" and "1 5x and 1 20x patches unreadable" in ok["reason"]


# --- (4b) mpp resolved once, at patching; extraction reads it back -------------------------------------------


@pytest.fixture(scope="module")
def slide_72dpi(tmp_path_factory) -> Path:
    """Tissue (a 20x scan, 0.5 um/px) whose only resolution metadata is a 72-dpi tag, 352.8 um/px, like
    boxes.tiff (which has no tissue to extract): it needs an mpp override at segmentation and patching."""
    from pipeline.demo import render_slide, write_pyramid_tiff

    path = tmp_path_factory.mktemp("slides") / "dpi72.tiff"
    write_pyramid_tiff(path, render_slide("solid", seed=4, size=2048, mpp=0.5), mpp=25_400 / 72)
    return path


def test_override_slide_extracts_with_the_mpp_recorded_at_patching(tmp_path, tiny, slide_72dpi):
    from pipeline.cli import main

    with pytest.raises(SlideError, match="352.8 um/px"):
        open_slide(slide_72dpi)  # the metadata alone is unusable
    overrides = {"dpi72": MppOverride(0.5)}
    segment_slide(slide_72dpi, "dpi72", tmp_path / "m.png", tmp_path / "t.geojson", tmp_path / "t.json",
                  tmp_path / "qc.png", TissueParams(), overrides)
    patch_slide(slide_72dpi, "dpi72", tmp_path / "t.geojson", tmp_path / "p.h5", tmp_path / "pqc.png",
                PatchParams(), overrides)
    grid = read_patches(tmp_path / "p.h5")
    assert len(grid.coords_5x) >= 2 and grid.attrs["mpp"] == 0.5

    res = extract_slide(slide_72dpi, tmp_path / "p.h5", tmp_path / "f5.h5", tmp_path / "f20.h5", tiny,
                        slide_id="dpi72", device="cpu", progress=False)  # no override
    assert (res.n_5x, res.n_20x) == (len(grid.coords_5x), len(grid.coords_20x))
    f20, c20, attrs = read_features(tmp_path / "f20.h5")
    assert f20.shape == (len(grid.coords_20x), 512) and np.isfinite(f20).all()
    np.testing.assert_array_equal(c20, grid.coords_20x)
    assert attrs["mpp"] == 0.5 and attrs["mpp_source"] == "override" and attrs["patch_size_level0"] == 256

    # the stage command needs no override flags, and no longer takes any
    args = ["extract", "--slide", str(slide_72dpi), "--slide-id", "dpi72", "--patches", str(tmp_path / "p.h5"),
            "--backbone", "tiny", "--weights", "random", "--out-5x", str(tmp_path / "c5.h5"), "--out-20x",
            str(tmp_path / "c20.h5"), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    np.testing.assert_array_equal(read_features(tmp_path / "c20.h5")[0], f20)
    with pytest.raises(SystemExit):
        main(args + ["--mpp-override", "0.5"])


def test_extract_refuses_another_slides_patch_file(tmp_path, slide_40x, cmu_patches):
    with open_slide(slide_40x) as slide:
        write_patches(tmp_path / "syn.h5", make_grid(slide))
    with pytest.raises(SlideError) as err:
        extract_slide(BUNDLED_SLIDE, tmp_path / "syn.h5", tmp_path / "f5.h5", tmp_path / "f20.h5", "tiny",
                      weights="random", device="cpu", progress=False)
    message = str(err.value)
    assert "6144x6144" in message and "2220x2967" in message, message
    assert "syn.h5" in message and BUNDLED_SLIDE.name in message
    assert not (tmp_path / "f5.h5").exists() and not (tmp_path / "f20.h5").exists()

    # same size, but recorded for another slide id
    _, grid = cmu_patches
    write_patches(tmp_path / "other.h5", PatchGrid(grid.coords_5x, grid.coords_20x, grid.parent_of_20x,
                                                   {**grid.attrs, "slide_id": "other"}))
    with pytest.raises(SlideError, match=r"made for slide 'other', not 'cmu'"):
        extract_slide(BUNDLED_SLIDE, tmp_path / "other.h5", tmp_path / "f5.h5", tmp_path / "f20.h5", "tiny",
                      weights="random", slide_id="cmu", device="cpu", progress=False)


def test_extract_needs_the_mpp_recorded_at_patching(tmp_path, cmu_patches):
    _, grid = cmu_patches
    attrs = {k: v for k, v in grid.attrs.items() if k != "mpp"}
    write_patches(tmp_path / "old.h5", PatchGrid(grid.coords_5x, grid.coords_20x, grid.parent_of_20x, attrs))
    with pytest.raises(SlideError, match=r"old\.h5 records no mpp; re-run patching"):
        extract_slide(BUNDLED_SLIDE, tmp_path / "old.h5", tmp_path / "f5.h5", tmp_path / "f20.h5", "tiny",
                      weights="random", device="cpu", progress=False)


# --- (5) every registered backbone, random weights, offline ------------------------------------------------


def test_backbone_forward_and_text_tower(random_backbone):
    bb = random_backbone
    cfg = bb.cfg
    assert bb.embed_dim == cfg.embed_dim == 512
    patch = np.random.default_rng(0).integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
    x = bb.transform(patch)
    assert x.shape == (3, cfg.input_size, cfg.input_size) and x.dtype == torch.float32
    with torch.inference_mode():
        img = bb.encode_image(x[None])
    assert img.shape == (1, 512) and torch.isfinite(img).all()
    if cfg.normalize_image:
        assert torch.allclose(img.norm(dim=-1), torch.ones(1), atol=1e-5)
    tokens = bb.tokenize(["glandular rings: nuclei around a pale lumen", "solid sheet"])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, bb.context_length)
    with torch.inference_mode():
        text = bb.encode_text(tokens)
        again = bb.encode_text_embeddings(bb.token_embedding(tokens), tokens)
        assert bb.token_embedding(tokens).shape == (2, bb.context_length, bb.text_width)
    assert text.shape == (2, 512)
    torch.testing.assert_close(again, text, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(text[0], text[1])
    assert bb.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_gradient_reaches_input_embeddings(random_backbone):
    bb = random_backbone
    tokens = bb.tokenize(["X X X X cribriform glands"])
    embeds = bb.token_embedding(tokens).detach().clone().requires_grad_(True)
    bb.encode_text_embeddings(embeds, tokens).sum().backward()
    grad = embeds.grad[0].abs().sum(dim=-1)
    assert (grad[1:5] > 0).all()  # the slots a learned context would occupy
    assert all(p.grad is None for p in bb.model.parameters())  # the backbone stays frozen


def test_checkpoint_round_trip(tmp_path, random_backbone, conch_tokenizer):
    bb = random_backbone
    name = bb.cfg.name
    if vlm_of(name):
        pytest.skip("an HLSS variant's weights are an HLSS checkpoint, not a state dict (tests/test_hlss.py)")
    path = tmp_path / f"{name}.pt"
    torch.save(bb.model.state_dict(), path)
    tokenizer = conch_tokenizer if name == "conch" else None
    other = create_backbone(name, weights=str(path), tokenizer=tokenizer, seed=123)  # other init, then overwritten
    for (k, a), (_, b) in zip(bb.model.state_dict().items(), other.model.state_dict().items()):
        assert torch.equal(a, b), k
    tokens = bb.tokenize(["solid sheets of small dark nuclei"])
    with torch.inference_mode():
        torch.testing.assert_close(other.encode_text(tokens), bb.encode_text(tokens))
    attrs = other.attrs()
    assert attrs["weights"] == str(path)
    assert attrs["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    del other


# --- (6) checkpoint errors, weights sources ---------------------------------------------------------------


def test_mismatched_checkpoint_names_file_and_keys(tiny, tmp_path):
    state = dict(tiny.model.state_dict())
    state.pop("ln_final.weight")
    state["visual.extra_head.weight"] = torch.zeros(3)
    state["text_projection"] = torch.zeros(128, 256)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        create_backbone("tiny", weights=str(path))
    message = str(err.value)
    assert str(path) in message and "'tiny'" in message
    assert "ln_final.weight" in message and "visual.extra_head.weight" in message
    assert "text_projection: file (128, 256) vs model (128, 512)" in message


def test_checkpoint_of_another_backbone_is_rejected(tmp_path, tiny):
    path = tmp_path / "tiny_as_quiltnet.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        create_backbone("quiltnet", weights=str(path))


def test_weights_sources(tmp_path):
    with pytest.raises(PipelineError, match=r"weights file .*nope\.pt for backbone 'tiny' does not exist"):
        create_backbone("tiny", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(PipelineError, match="'tiny' has no published weights"):
        create_backbone("tiny")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt"):
        create_backbone("tiny", weights=str(tmp_path / "junk.pt"))


def test_random_weights_are_seeded():
    a, b = create_backbone("tiny", "random"), create_backbone("tiny", "random")
    c = create_backbone("tiny", "random", seed=1)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.conv1.weight"], sc["visual.conv1.weight"])
    assert a.attrs()["weights"] == "random" and a.attrs()["weights_seed"] == 0


def test_plip_loads_a_hugging_face_clip_checkpoint(tmp_path):
    """PLIP ships as a transformers CLIPModel; our open_clip build must reproduce its embeddings."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig()).eval()  # CLIP ViT-B/32 with QuickGELU, PLIP's configuration
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    plip = create_backbone("plip", weights=str(path))
    patch = np.random.default_rng(1).integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
    x = plip.transform(patch)[None]
    tokens = plip.tokenize(["tumor cells with prominent nucleoli", "normal lung"])
    with torch.inference_mode():
        ours_img, ours_txt = plip.encode_image(x), plip.encode_text(tokens)
        hf_img, hf_txt = hf.get_image_features(pixel_values=x), hf.get_text_features(input_ids=tokens)
    hf_img = getattr(hf_img, "pooler_output", hf_img)
    hf_txt = getattr(hf_txt, "pooler_output", hf_txt)
    torch.testing.assert_close(ours_img, hf_img, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_txt, hf_txt, rtol=1e-4, atol=1e-4)


def test_tokenizer_pads_to_the_context_and_fits_the_vocabulary(random_backbone):
    if random_backbone.cfg.name != "conch":
        tokens = random_backbone.tokenize(["solid sheet"])
        assert tokens[0, :4].tolist() == [49406, tokens[0, 1], tokens[0, 2], 49407]  # CLIP's start/end ids
        assert (tokens[0, 4:] == 0).all()
        return
    conch = random_backbone
    tokens = conch.tokenize(["Solid sheet", "glandular rings : nuclei around a pale lumen"])
    assert tokens.shape == (2, 128) and int(tokens.max()) < 32007
    assert tokens[0, :4].tolist() == [1, tokens[0, 1], tokens[0, 2], 2] and (tokens[0, 4:] == 0).all()
    assert conch.model.text.token_embedding.num_embeddings == 32007


def test_conch_without_tokenizer_falls_back_only_for_random_weights():
    conch = create_backbone("conch", weights="random")
    assert "fallback" in conch.attrs()["tokenizer"]
    tokens = conch.tokenize(["solid sheet of tumour cells"])
    with torch.inference_mode():
        torch.testing.assert_close(conch.encode_text_embeddings(conch.token_embedding(tokens), tokens),
                                   conch.encode_text(tokens))


def test_conch_rejects_a_tiny_tokenizer(tmp_path):
    path = word_tokenizer(tmp_path / "tokenizer.json", 50)
    with pytest.raises(ValueError, match="vocabulary of 54 tokens"):
        create_backbone("conch", weights="random", tokenizer=path)


def test_conch_needs_a_tokenizer_for_real_weights(tmp_path):
    path = tmp_path / "conch.pt"
    torch.save({"logit_scale": torch.tensor(1.0)}, path)
    with pytest.raises(ValueError, match="needs its tokenizer file"):
        create_backbone("conch", weights=str(path))


# --- registry, CLI and config surfaces ---------------------------------------------------------------------


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="'tiny' is already registered"):
        register_backbone(BackboneCfg(name="tiny", architecture="x", input_size=64))(lambda cfg, ctx: None)
    assert list_backbones().count("tiny") == 1


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(PipelineError, match="unknown backbone 'uni'.*conch, conch_hlss, plip, plip_hlss, quiltnet, quiltnet_hlss, tiny"):
        create_backbone("uni", weights="random")


def test_overrides_replace_cfg_fields_and_none_changes_nothing():
    bb = create_backbone("tiny", weights="random", interpolation="bilinear", precision=None)
    assert bb.cfg.interpolation == "bilinear" and bb.cfg.precision == get_backbone_cfg("tiny").precision
    with pytest.raises(PipelineError, match="unknown cfg override"):
        create_backbone("tiny", weights="random", colour="blue")


def test_schema_and_cli_choices_follow_the_registry():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    backbones = schema["properties"]["features"]["properties"]["backbones"]
    assert backbones["items"]["properties"]["name"]["enum"] == list_backbones()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert {b["name"] for b in config["features"]["backbones"]} <= set(list_backbones())
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    extract = sub.choices["extract"]
    choices = next(a for a in extract._actions if a.dest == "backbone").choices
    assert list(choices) == list_backbones()


def test_preprocess_is_resize_then_normalise():
    pre = Preprocess(112, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    patch = np.random.default_rng(2).integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
    resized = pre.resize(patch)
    assert resized.shape == (3, 112, 112) and resized.dtype == torch.uint8
    torch.testing.assert_close(pre(patch), (resized.float() / 255 - 0.5) / 0.25)
    flat = np.full((PATCH, PATCH, 3), 200, np.uint8)
    assert (pre.resize(flat) == 200).all()  # antialiased resize of a flat patch stays flat
    with pytest.raises(ValueError, match="uint8"):
        pre.resize(patch.astype(np.float32))


# --- text embeddings ----------------------------------------------------------------------------------------


def test_text_embeddings_of_a_prompt_file(tmp_path, tiny):
    out = tmp_path / "demo.h5"
    embed_prompts(DEMO_PROMPTS, out, tiny, device="cpu")
    emb = read_text_embeddings(out)
    prompts = load_prompts(DEMO_PROMPTS)
    assert emb.classes == prompts.labels
    assert emb.embeddings.shape == (len(prompts.labels), 16, 512) and emb.embeddings.dtype == np.float32
    assert emb.texts[1] == prompts.classes[1].texts()
    with torch.inference_mode():
        expected = tiny.encode_text(tiny.tokenize([prompts.classes[1].texts()[5]]))[0].numpy()
    np.testing.assert_allclose(emb.embeddings[1, 5], expected, rtol=1e-5, atol=1e-5)
    assert emb.attrs["backbone"] == "tiny" and emb.attrs["weights"] == "random"
