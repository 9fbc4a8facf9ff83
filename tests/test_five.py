"""FiVE (pipeline.model.five, pipeline.training.methods.five): padding, instance choice, field dropout, no
validation description in training, checkpoints without a text tower, and learning description-linked signal."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.descriptions.questions import UNKNOWN, parse_questions
from pipeline.descriptions.table import FineGrainedLabels
from pipeline.model.five import (
    FiVE,
    FiVEConfig,
    augment_descriptions,
    drop_fields,
    evaluation_instances,
    sample_count,
    segment_sample,
)
from pipeline.training.checkpoints import load_checkpoint, restore_model, save_checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.data import SlideBag
from pipeline.training.loop import evaluate, fit, seed_everything
from pipeline.training.methods import get_method
from pipeline.training.methods.base import Resources
from pipeline.training.methods.five import FiVEMethod
from pipeline.training.tasks import Classification

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 64
CPU = torch.device("cpu")
QUESTIONS = parse_questions(json.dumps({
    "questions": [
        {"field": "pattern", "name": "growth pattern", "question": "What is the growth pattern?",
         "answers": ["glands", "sheets"]},
        {"field": "size", "name": "nuclear size", "question": "How large are the nuclei?", "answers": ["small", "large"]},
        {"field": "mitoses", "name": "mitoses", "question": "How frequent are mitoses?",
         "answers": ["rare", "frequent", "very frequent"]},
        {"field": "necrosis", "name": "necrosis", "question": "Is there necrosis?", "answers": ["present", "absent"]},
    ],
    "classes": {"glandular": "growth pattern: glands", "solid": "growth pattern: sheets"},
}), "synthetic questions")
CONFIG = TrainConfig(epochs=30, patience=10, seed=1, device="cpu")
#: FiVE's settings in these tests (config.yaml: train.method_settings.five)
SETTINGS = {"prompts": 4, "n_ctx": 4, "heads": 4}


@pytest.fixture(scope="module")
def backbone():
    from pipeline.features import create_backbone
    from pipeline.model.prompt_learner import freeze

    return freeze(create_backbone("tiny", weights="random", embed_dim=DIM))


def cohort(n: int, seed: int, prefix: str) -> tuple[list[tuple[SlideBag, int]], dict[str, dict[str, str]]]:
    """Two classes; a patient's field values follow its class (pattern always, size mostly, the rest at random;
    mitoses never "very frequent"),
    and a quarter of its 20x children carry the direction of one of its field values; padding children are zero."""
    g = np.random.default_rng(seed)
    basis = np.random.default_rng(0).normal(size=(4, 3, DIM))
    bags, answers = [], {}
    for i in range(n):
        y = i % 2
        values = [y, y if g.random() < 0.8 else 1 - y, int(g.integers(0, 2)), int(g.random() < 0.5)]  # no "very frequent"
        rows = int(g.integers(6, 12))
        x20 = g.normal(size=(rows, 16, DIM)).astype(np.float32)
        mask = g.random((rows, 16)) < 0.8
        mask[:, 0] = True
        field = g.integers(0, 4, size=(rows, 16))
        for r, s in zip(*np.nonzero((g.random((rows, 16)) < 0.25) & mask)):
            x20[r, s] += 2.5 * basis[field[r, s], values[field[r, s]]]
        x20[~mask] = 0.0
        sid = f"{prefix}{i}"
        answers[sid] = {q.field: q.answers[v] for q, v in zip(QUESTIONS.questions, values)}
        if g.random() < 0.2:
            answers[sid]["size"] = UNKNOWN
        bag = SlideBag(sid, torch.from_numpy(x20.mean(1)), torch.from_numpy(x20), torch.from_numpy(mask),
                       np.zeros((rows, 2)), np.zeros((rows, 16, 2)))
        bags.append((bag, y))
    return bags, answers


@pytest.fixture(scope="module")
def data():
    train, a = cohort(16, 1, "train")
    val, b = cohort(8, 2, "val")
    test, c = cohort(40, 3, "test")
    return train, val, test, FineGrainedLabels(QUESTIONS, {**a, **b, **c})


def built(name: str, backbone, labels: FineGrainedLabels, config: TrainConfig = CONFIG, settings=None):
    task = Classification("synthetic", ["glandular", "solid"], {}, [])
    method = get_method(name)(config, task, settings or SETTINGS)
    resources = Resources(embed_dim=DIM, device=CPU, backbone_factory=lambda: backbone, descriptions=labels)
    resources.backbone(name)
    seed_everything(config.seed)
    return method, method.build(resources)


# --- the model and its pieces --------------------------------------------------------------------------------------


def test_padding_instances_leave_the_slide_embedding_unchanged():
    torch.manual_seed(0)
    model = FiVE(32, FiVEConfig(heads=4)).eval()
    x, queries = torch.randn(9, 32), torch.randn(6, 32)
    ratio = torch.arange(9) / 9
    clean = model(x, ratio, torch.ones(9, dtype=torch.bool), queries)
    padded_x = torch.cat([x, 1e3 * torch.randn(5, 32)])
    padded_x[-1] = float("nan")  # whatever padding holds
    valid = torch.cat([torch.ones(9, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)])
    padded = model(padded_x, torch.cat([ratio, torch.rand(5)]), valid, queries)
    assert torch.allclose(clean.slide, padded.slide, atol=1e-5)
    assert torch.allclose(padded.attention[:, :9], clean.attention, atol=1e-6) and (padded.attention[:, 9:] == 0).all()
    other = x.clone()
    other[3] += 1.0  # a real instance does count
    assert not torch.allclose(model(other, ratio, torch.ones(9, dtype=torch.bool), queries).slide, clean.slide)


def test_test_time_instances_are_deterministic_and_training_draws_one_per_segment():
    assert torch.equal(evaluation_instances(37, "all", 0.25, 16384), torch.arange(37))
    spaced = evaluation_instances(37, "spaced", 0.25, 16384)
    assert torch.equal(spaced, evaluation_instances(37, "spaced", 0.25, 16384)) and len(spaced) == 9
    assert torch.equal(evaluation_instances(40, "spaced", 0.25, 5), torch.tensor([4, 12, 20, 28, 36]))
    assert sample_count(1000, 1.0, 16) == 16 and sample_count(3, 0.1, 16) == 1 and sample_count(0, 0.5, 4) == 0
    g = torch.Generator().manual_seed(0)
    draws = [segment_sample(40, 0.25, 16384, g) for _ in range(50)]
    assert all(len(d) == 10 and bool(((d // 4) == torch.arange(10)).all()) for d in draws)  # one per segment of 4
    assert len({tuple(d.tolist()) for d in draws}) > 1  # random in training
    assert torch.equal(segment_sample(7, 1.0, 16384, g), torch.arange(7))
    with pytest.raises(ValueError, match="evaluation instances"):
        evaluation_instances(5, "random", 0.25, 10)


def test_field_dropout_never_drops_every_field():
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 6):
        kept = [drop_fields(n, g) for _ in range(400)]
        assert all(1 <= len(k) <= n and k == sorted(set(k)) for k in kept)
        assert {n - len(k) for k in kept} == set(range(n))  # every k in [0, n - 1] is drawn
    with pytest.raises(ValueError):
        drop_fields(0, g)


def test_augmented_descriptions_merge_equal_ones_shuffle_fields_and_have_no_empty_target():
    g = torch.Generator().manual_seed(0)
    parts = [["a: 1", "b: 2", "c: 3"], ["a: 1", "b: 2", "c: 3"], [], ["a: 2"]]
    orders = set()
    for _ in range(30):
        out = augment_descriptions(parts, g)
        assert len(out.texts) == 2 and out.targets[0] == out.targets[1] and out.targets[2] is None
        assert sorted(out.texts[out.targets[0]].split("; ")) == parts[0] and out.texts[out.targets[3]] == "a: 2"
        orders.add(out.texts[out.targets[0]])
    assert len(orders) > 1  # the order of the fields is shuffled


# --- the method -----------------------------------------------------------------------------------------------------


class _Recording(FiVEMethod):
    """FiVE that records every training batch's slides and every text of its steps (the test's eyes only)."""

    def training_loss(self, model, batch, device, epoch, epochs):
        self.batches = getattr(self, "batches", []) + [[bag.slide_id for bag, _ in batch]]
        return super().training_loss(model, batch, device, epoch, epochs)

    def step_targets(self, batch_ids, kept):
        step = super().step_targets(batch_ids, kept)
        self.step_texts = getattr(self, "step_texts", set()) | set(step.texts)
        return step


def test_a_validation_patients_description_never_reaches_training(backbone, data):
    train, val, _, labels = data
    marked = dict(labels.by_slide)
    marked[val[0][0].slide_id] = {**marked[val[0][0].slide_id], "mitoses": "very frequent"}  # only this patient
    for sid, _ in ((b.slide_id, y) for b, y in train):
        assert marked[sid]["mitoses"] != "very frequent"
    labels = FineGrainedLabels(QUESTIONS, marked)
    task = Classification("synthetic", ["glandular", "solid"], {}, [])
    cfg = TrainConfig(epochs=4, patience=4, seed=1, device="cpu")
    method = _Recording(cfg, task, {"prompts": 2, "n_ctx": 2, "heads": 4})
    tokenized: list[str] = []

    class Spy:  # the real backbone, every tokenized text noted
        def __getattr__(self, name):
            return getattr(backbone, name)

        def tokenize(self, texts):
            tokenized.extend(texts)
            return backbone.tokenize(texts)

    resources = Resources(embed_dim=DIM, device=CPU, backbone_factory=lambda: Spy(), descriptions=labels)
    model = method.build(resources)
    fit(method, model, train, val, cfg, CPU)
    train_ids = {b.slide_id for b, _ in train}
    assert method.batches and all(set(ids) <= train_ids for ids in method.batches)
    assert method.step_texts and not any("very frequent" in t for t in method.step_texts)
    assert not any("very frequent" in t for t in tokenized)
    assert any("mitoses: frequent" in t for t in tokenized)  # training descriptions were encoded
    with pytest.raises(RuntimeError, match="not among the fold's training slides"):
        method.step_targets([val[0][0].slide_id], [0, 1, 2, 3])


def test_five_learns_description_linked_signal_few_shot_and_ranks_it_zero_shot(backbone, data):
    train, val, test, labels = data
    targets = [y for _, y in test]
    # the few-shot method at the training defaults; the zero-shot protocol (no early stop) in fewer, larger steps
    zero_shot = dataclasses.replace(CONFIG, epochs=15), {**SETTINGS, "batch_size": 4, "lr": 1e-3}
    for name, (cfg, settings), metric, floor in (("five", (CONFIG, SETTINGS), "acc", 0.8),
                                                 ("five_zeroshot", zero_shot, "auc", 0.8)):
        method, model = built(name, backbone, labels, cfg, settings)
        result = fit(method, model, train, val, cfg, CPU)
        if name == "five_zeroshot":
            assert len(result.history) == cfg.epochs and result.best_epoch == cfg.epochs - 1  # no val choice
        ev = evaluate(method, model, [b for b, _ in test], targets, CPU)
        metrics = method.task.score(targets, ev.outputs)
        assert metrics[metric] > floor, (name, metrics)


def test_the_gradient_reaches_both_contexts_and_the_checkpoint_predicts_alike_without_a_text_tower(
        backbone, data, tmp_path):
    train, _, test, labels = data
    method, model = built("five", backbone, labels)
    method.prepare(model, train)
    model.train()
    method.training_loss(model, train[:4], CPU, 0, 1).backward()
    assert model.descriptions.ctx.grad.abs().sum() > 0 and model.queries.learnable.ctx.grad.abs().sum() > 0
    assert model.fuse.weight.grad.abs().sum() > 0
    model.eval()
    path = tmp_path / "fold0.pt"
    save_checkpoint(path, method, model, "tiny", DIM, None, {"fold": 0})
    restored = restore_model(load_checkpoint(path, backbone="tiny"), CPU)
    with torch.no_grad():
        cache, again = method.eval_cache(model), method.eval_cache(restored)
        for bag, _ in test[:3]:
            a = method.logits(model, bag, CPU, cache)[0]
            assert torch.allclose(a, method.logits(restored, bag, CPU, again)[0], atol=1e-4)
            assert torch.allclose(a, method.logits(model, bag, CPU, cache)[0])  # deterministic at test time
    assert restored.query_names[:2] == ["query: growth pattern", "query: nuclear size"]
    with pytest.raises(ValueError, match="only scores its class descriptions"):
        restored.descriptions(["growth pattern: glands; necrosis: present"])


def test_the_question_set_must_describe_the_tasks_classes(backbone, data):
    task = Classification("synthetic", ["solid", "glandular"], {}, [])
    method = get_method("five")(CONFIG, task, SETTINGS)
    resources = Resources(embed_dim=DIM, device=CPU, backbone_factory=lambda: backbone, descriptions=data[3])
    with pytest.raises(Exception, match=r"describes the classes \['glandular', 'solid'\]"):
        method.build(resources)
    with pytest.raises(Exception, match="needs the task's question set"):
        get_method("five")(CONFIG, task, SETTINGS).build(Resources(embed_dim=DIM, device=CPU))
