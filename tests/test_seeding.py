"""The package's seeding and precision helpers: per-slide streams pinned (pools and kNN samples must not move
between versions), torch seeding that leaves the caller's state alone, and the autocast rule."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.device import autocast, run_precision
from pipeline.pretrain.knn import sample_patch_rows
from pipeline.pretrain.tiles import tile_sample
from pipeline.seeding import deterministic, seeded, slide_rng


def test_slide_rng_is_pinned_and_shared_by_the_tile_pool_and_the_knn_sample():
    assert slide_rng(0, "slide-1").integers(0, 1000, 5).tolist() == [504, 906, 777, 601, 402]
    assert tile_sample("slide-1", 100, 5, 0).tolist() == [40, 48, 59, 76, 87]
    assert sample_patch_rows("slide-1", 100, 5, 0).tolist() == [40, 48, 59, 76, 87]
    assert not np.array_equal(slide_rng(0, "slide-1").random(4), slide_rng(1, "slide-1").random(4))


def test_seeded_draws_the_same_and_leaves_the_callers_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        a = torch.rand(3)
    with seeded(7):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)


def test_deterministic_restores_the_callers_setting():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(0, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        first = torch.rand(2)
    with deterministic(0, torch.device("cpu")):
        assert torch.equal(torch.rand(2), first)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_autocast_runs_fp32_on_the_cpu_and_the_asked_precision_on_a_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert run_precision(cpu, "bf16") == "fp32"
    assert run_precision(gpu, "bf16") == "bf16" and run_precision(gpu, "fp32") == "fp32"
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
