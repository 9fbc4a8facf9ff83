"""HLSS pretraining: the objective trains what it should, the checkpoint is the `{vlm}_hlss` backbone's weights,
pretraining improves patient kNN on patients with a texture signal, and a killed run resumes where it stopped.

The cohort is synthetic: each patient's tiles are stripes whose frequency says its class (low or high), with an
orientation and a tint of the patient's own, and noise. The random `tiny` tower sees the tint more than the stripes;
views under colour jitter and turns, contrasted across patients, should teach the adapter the stripes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.features.registry import create_backbone
from pipeline.formats import TileReader, read_tile_pool_index, write_tile_pool
from pipeline.pretrain.attributes import embed_attributes, load_hlss_attributes, resolve_attribute_file
from pipeline.pretrain.batches import BatchShape, BatchSource, Hierarchy
from pipeline.pretrain.checkpoint import HlssCheckpointError, load_hlss_checkpoint, save_hlss_checkpoint
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.knn import knn_accuracy
from pipeline.pretrain.loss import text_alignment
from pipeline.pretrain.model import ResidualAdapter
from pipeline.pretrain.train import HlssModel, PretrainOutputs, loss_of_batch, pretrain

REPO = Path(__file__).resolve().parents[1]
TILE = 64
#: small and quick, with a patients x slides x patches x views batch of 8 x 2 x 2 x 2
SETTINGS = dict(patients_per_step=8, slides_per_patient=2, patches_per_slide=2, views=2, checkpoint_every=10)


def _stripes(rng: np.random.Generator, freq: float, angle: float, tint: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0:TILE, 0:TILE] / TILE
    wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    image = 128 + 60 * wave[..., None] * tint[None, None] + rng.normal(0, 25, (TILE, TILE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_pool(path: Path, patients: int = 12, slides: int = 2, tiles: int = 8, seed: int = 0) -> dict[str, int]:
    """Write a tile pool of textured patients; returns each patient's class (the stripe frequency band)."""
    rng = np.random.default_rng(seed)
    classes, rows = {}, []
    for p in range(patients):
        case, cls = f"P{p:02d}", p % 2
        freq = rng.uniform(3, 5) if cls == 0 else rng.uniform(8, 11)
        angle, tint = rng.uniform(0, np.pi), rng.uniform(0.2, 1.0, 3)
        classes[case] = cls
        for s in range(slides):
            images = np.stack([_stripes(rng, freq, angle, tint) for _ in range(tiles)])
            coords = np.stack([np.arange(tiles) * TILE, np.zeros(tiles, np.int64)], axis=1)
            rows.append((f"{case}_S{s}", case, images, coords))
    write_tile_pool(path, iter(rows), TILE, {"seed": seed, "tiles_per_slide": tiles})
    return classes


def outputs_in(folder: Path) -> PretrainOutputs:
    return PretrainOutputs(folder / "hlss.pt", folder / "state" / "last.pt", folder / "losses.csv", folder / "loss.png")


@pytest.fixture(scope="module")
def attributes_file() -> Path:
    return resolve_attribute_file(None, "demo")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, attributes_file, one_torch_thread):
    """One pretraining run of 80 steps on the synthetic cohort (about 20 s on a CPU core)."""
    folder = tmp_path_factory.mktemp("hlss")
    classes = synthetic_pool(folder / "pool.h5")
    vlm = create_backbone("tiny", "random", seed=0)
    config = PretrainConfig(steps=80, **SETTINGS)
    payload = pretrain(folder / "pool.h5", attributes_file, vlm, outputs_in(folder), config, device="cpu",
                       vlm_weights_arg="random")
    return folder, classes, payload


def embed_pool(backbone, pool: Path) -> tuple[np.ndarray, object]:
    index = read_tile_pool_index(pool)
    with TileReader(pool) as tiles:
        pixels = tiles.read(np.arange(len(index)))
    x = torch.stack([backbone.preprocess.resize(tile) for tile in pixels])
    with torch.no_grad():
        return backbone.encode_image(backbone.preprocess.normalize(x)).numpy(), index


def test_loss_decreases_and_the_run_writes_its_curve(cohort):
    folder, _, payload = cohort
    losses = pd.read_csv(folder / "losses.csv")
    assert list(losses["step"]) == list(range(1, 81))
    assert losses["loss"].iloc[-10:].mean() < 0.8 * losses["loss"].iloc[:10].mean()
    for level in ("patch", "slide", "patient"):
        assert losses[f"contrast_{level}"].iloc[-10:].mean() < losses[f"contrast_{level}"].iloc[:10].mean()
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["step"] == 80 and payload["vlm"] == "tiny" and payload["tower"] == {}


def test_patient_knn_improves_after_pretraining(cohort):
    folder, classes, _ = cohort
    before = create_backbone("tiny", "random", seed=0)
    after = create_backbone("tiny_hlss", str(folder / "hlss.pt"))
    scores = {}
    for name, backbone in (("before", before), ("after", after)):
        features, index = embed_pool(backbone, folder / "pool.h5")
        per_slide = {s: features[index.slide_of == i] for i, s in enumerate(index.slide_ids)}
        case_of = dict(zip(index.slide_ids, index.case_ids))
        label_of = {s: classes[case_of[s]] for s in index.slide_ids}
        scores[name] = knn_accuracy(per_slide, case_of, label_of, 2, folds=3, k=10, patches_per_slide=0)
    assert scores["after"]["patient"] > scores["before"]["patient"], scores
    assert scores["after"]["patch"] > scores["before"]["patch"] + 0.05, scores


def test_gradient_reaches_adapter_and_heads_and_alignment_alone_trains_the_adapter(tmp_path, attributes_file):
    synthetic_pool(tmp_path / "pool.h5", patients=4)
    vlm = create_backbone("tiny", "random", seed=0)
    embeddings = embed_attributes(vlm, load_hlss_attributes(attributes_file))
    model = HlssModel(vlm, embeddings, PretrainConfig(**SETTINGS))
    index = read_tile_pool_index(tmp_path / "pool.h5")
    with TileReader(tmp_path / "pool.h5") as tiles:
        batch = BatchSource(tiles, Hierarchy(index), BatchShape(4, 2, 2, 2), vlm.cfg.input_size, 0)(0)
    from pipeline.pretrain.loss import HlssLoss

    total, _ = loss_of_batch(model, HlssLoss(), batch, torch.device("cpu"))
    total.backward()
    assert model.adapter.up.weight.grad.abs().sum() > 0  # `up` starts at zero, so only it has a gradient at step 0
    for head in model.heads.heads.values():
        assert head.weight.grad.abs().sum() > 0
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.model.parameters())  # tower frozen

    model.zero_grad()
    _, e_hat = model(batch.images)
    align = sum(text_alignment(e_hat, a, 0.02) for a in model.attributes().values())
    align.backward()
    assert model.adapter.up.weight.grad.abs().sum() > 0  # the alignment term alone trains the adapter
    assert all(head.weight.grad is None or head.weight.grad.abs().sum() == 0 for head in model.heads.heads.values())


def test_untrained_variant_embeds_exactly_as_its_vlm():
    x = torch.randn(3, 3, 112, 112)
    plain, variant = create_backbone("tiny", "random", seed=4), create_backbone("tiny_hlss", "random", seed=4)
    with torch.no_grad():
        assert torch.equal(plain.encode_image(x), variant.encode_image(x))
        tokens = plain.tokenize(["a gland"])
        assert torch.equal(plain.encode_text(tokens), variant.encode_text(tokens))


def test_checkpoint_round_trips_to_identical_embeddings(cohort):
    folder, _, payload = cohort
    x = torch.randn(4, 3, 112, 112)
    first, second = (create_backbone("tiny_hlss", str(folder / "hlss.pt")) for _ in range(2))
    vlm = create_backbone("tiny", "random", seed=0)
    adapter = ResidualAdapter(vlm.embed_dim, payload["adapter_hidden"])
    adapter.load_state_dict(payload["adapter"])
    with torch.no_grad():
        expected = adapter(vlm.encode_image(x))
        assert torch.equal(first.encode_image(x), second.encode_image(x))
        assert torch.allclose(first.encode_image(x), expected, atol=1e-6)
        assert not torch.allclose(vlm.encode_image(x), expected, atol=1e-3)  # the adapter learned something
    attrs = first.attrs()
    assert attrs["hlss_vlm"] == "tiny" and attrs["hlss_steps"] == 80 and attrs["weights"] == str(folder / "hlss.pt")


def test_a_checkpoint_of_another_vlm_or_another_file_is_refused(cohort, tmp_path):
    folder, _, _ = cohort
    ckpt = load_hlss_checkpoint(folder / "hlss.pt")
    save_hlss_checkpoint(tmp_path / "plip.pt", {**ckpt, "vlm": "plip"})
    with pytest.raises(HlssCheckpointError, match="trained on backbone 'plip', not 'tiny'"):
        create_backbone("tiny_hlss", str(tmp_path / "plip.pt"))
    torch.save(create_backbone("tiny", "random").model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(HlssCheckpointError, match="is not an HLSS checkpoint"):
        create_backbone("tiny_hlss", str(tmp_path / "plain.pt"))


def test_last_blocks_tunes_the_tower_and_the_checkpoint_carries_it(tmp_path, attributes_file):
    synthetic_pool(tmp_path / "pool.h5", patients=4)
    vlm = create_backbone("tiny", "random", seed=0)
    config = PretrainConfig(steps=4, trainable="last_blocks", last_blocks=1, **SETTINGS)
    payload = pretrain(tmp_path / "pool.h5", attributes_file, vlm, outputs_in(tmp_path), config, device="cpu",
                       vlm_weights_arg="random")
    assert payload["tower"] and all(k.startswith(("visual.transformer.resblocks.1.", "visual.ln_post", "visual.proj"))
                                    for k in payload["tower"])
    original = create_backbone("tiny", "random", seed=0).model.state_dict()
    assert any(not torch.equal(v, original[k]) for k, v in payload["tower"].items())
    loaded = create_backbone("tiny_hlss", str(tmp_path / "hlss.pt")).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in payload["tower"].items())


def _pretrain_command(folder: Path, attributes: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "pretrain", "--tiles", str(folder / "pool.h5"),
            "--attributes", str(attributes), "--backbone", "tiny", "--weights", "random", "--device", "cpu",
            "--threads", "1", "--steps", str(steps), "--patients-per-step", "8", "--checkpoint-every", "5",
            "--out", str(folder / "hlss.pt"), "--state", str(folder / "state" / "last.pt"),
            "--losses", str(folder / "losses.csv"), "--curve", str(folder / "loss.png")]


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, attributes_file):
    synthetic_pool(tmp_path / "pool.h5", patients=8)
    command = _pretrain_command(tmp_path, attributes_file, steps=30)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state" / "last.pt"
    deadline = time.time() + 120
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert state.exists() and not (tmp_path / "hlss.pt").exists(), "the job ended before it could be killed"
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 5 <= killed_at < 30

    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed_at = int(rerun.stderr.split("resuming pretraining from step ")[1].split()[0])
    assert killed_at <= resumed_at < 30
    losses = pd.read_csv(tmp_path / "losses.csv")
    assert list(losses["step"]) == list(range(1, 31))

    straight = tmp_path / "straight"
    straight.mkdir()
    torch.set_num_threads(1)
    pretrain(tmp_path / "pool.h5", attributes_file, create_backbone("tiny", "random"), outputs_in(straight),
             PretrainConfig(steps=30, patients_per_step=8, checkpoint_every=5), device="cpu", vlm_weights_arg="random")
    resumed, uninterrupted = load_hlss_checkpoint(tmp_path / "hlss.pt"), load_hlss_checkpoint(straight / "hlss.pt")
    for key, value in uninterrupted["adapter"].items():
        assert torch.allclose(resumed["adapter"][key], value, atol=1e-6), key
    assert np.allclose(pd.read_csv(straight / "losses.csv")["loss"], losses["loss"], atol=1e-4)


def test_changed_settings_do_not_resume_an_old_state(tmp_path, attributes_file, caplog):
    synthetic_pool(tmp_path / "pool.h5", patients=4)
    run = lambda lr: pretrain(tmp_path / "pool.h5", attributes_file, create_backbone("tiny", "random"),  # noqa: E731
                              outputs_in(tmp_path), PretrainConfig(steps=5, lr=lr, **SETTINGS), device="cpu")
    run(1e-3)
    with caplog.at_level("WARNING"):
        run(1e-4)
    assert "belongs to another run" in caplog.text
    lr = pd.read_csv(tmp_path / "losses.csv")["lr"]
    assert len(lr) == 5 and lr.max() <= 1e-4  # all five steps were the second run's


@pytest.fixture(scope="module")
def cmu_patches(tmp_path_factory, cmu1) -> Path:
    """The bundled CMU-1 region segmented and patched by the stage commands."""
    from pipeline.cli import main

    folder = tmp_path_factory.mktemp("cmu")
    seg = ["--slide", str(cmu1), "--status-dir", str(folder / "status")]
    assert main(["segment", *seg, "--mask", str(folder / "m.png"), "--geojson", str(folder / "t.geojson"),
                 "--stats", str(folder / "s.json"), "--qc", str(folder / "qc.png")]) == 0
    patches = folder / "CMU-1-Small-Region.h5"
    assert main(["patch", *seg, "--geojson", str(folder / "t.geojson"), "--out", str(patches),
                 "--qc", str(folder / "pqc.png")]) == 0
    return patches


def test_tile_pool_reads_real_slide_tiles_at_their_coordinates(tmp_path, cmu1, cmu_patches):
    from pipeline.cli import main
    from pipeline.formats import read_patches
    from pipeline.slide import open_slide

    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slide_id,case_id,label\nCMU-1-Small-Region,CMU-1,x\ngone,CMU-2,x\n")
    patches = cmu_patches
    gone = tmp_path / "gone.h5"  # a slide whose file has disappeared: left out with its reason, the rest pooled
    gone.write_bytes(patches.read_bytes())
    assert main(["pretrain-tiles", "--sheet", str(sheet), "--slides", str(cmu1), str(tmp_path / "gone.svs"),
                 "--patches", str(patches), str(gone), "--tiles-per-slide", "4", "--out", str(tmp_path / "pool.h5")]) == 0
    index = read_tile_pool_index(tmp_path / "pool.h5")
    assert index.slide_ids == ["CMU-1-Small-Region"] and index.case_ids == ["CMU-1"]
    assert "gone" in json.loads(index.attrs["failed"])
    grid = read_patches(patches)
    assert len(index) == 4 and all(any((c == row).all() for row in grid.coords_20x) for c in index.coords)
    size, s20 = int(grid.attrs["patch_size"]), int(grid.attrs["patch_size_level0_20x"])
    with TileReader(tmp_path / "pool.h5") as tiles, open_slide(cmu1) as slide:
        x, y = index.coords[2]
        assert np.array_equal(tiles.read(np.array([2]))[0], slide.read_region_scaled(int(x), int(y), s20, size))


def test_adapting_the_vlm_features_gives_the_features_extraction_gives(cohort, cmu1, cmu_patches, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.features.extract import extract_slide
    from pipeline.formats import read_features

    folder, _, _ = cohort
    ckpt = str(folder / "hlss.pt")
    for name, weights in (("tiny", "random"), ("tiny_hlss", ckpt)):
        extract_slide(cmu1, cmu_patches, tmp_path / f"{name}_5x.h5", tmp_path / f"{name}_20x.h5", name,
                      weights=weights, device="cpu", num_workers=0, progress=False)
    sources = [str(tmp_path / f"tiny_{s}.h5") for s in ("5x", "20x")]
    outputs = [str(tmp_path / f"adapted_{s}.h5") for s in ("5x", "20x")]
    assert main(["adapt-features", "--backbone", "tiny_hlss", "--weights", ckpt, "--vlm-files", *sources,
                 "--out", *outputs]) == 0
    for scale in ("5x", "20x"):
        adapted, coords, attrs = read_features(tmp_path / f"adapted_{scale}.h5")
        extracted, coords_x, attrs_x = read_features(tmp_path / f"tiny_hlss_{scale}.h5")
        assert np.array_equal(coords, coords_x) and np.allclose(adapted, extracted, atol=1e-5)
        assert attrs["backbone"] == attrs_x["backbone"] == "tiny_hlss" and attrs["weights"] == ckpt
    # features of other weights (seed 1) are refused, naming the slide
    extract_slide(cmu1, cmu_patches, tmp_path / "s1_5x.h5", tmp_path / "s1_20x.h5", "tiny", weights="random",
                  seed=1, device="cpu", num_workers=0, progress=False)
    assert main(["adapt-features", "--backbone", "tiny_hlss", "--weights", ckpt, "--vlm-files",
                 str(tmp_path / "s1_5x.h5"), "--out", str(tmp_path / "bad.h5")]) != 0
    assert "slide 'CMU-1-Small-Region'" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
