"""Every registered method explains itself through `Method.explain`: one finite score per real patch of each scale
it reads, NaN exactly on padding children, scores that follow the patch's own features; and the ensemble mean."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.descriptions.questions import parse_questions
from pipeline.descriptions.table import FineGrainedLabels
from pipeline.explain.scores import PatchScores, mean_scores, scatter_children
from pipeline.labels import LabelTree
from pipeline.training.config import TrainConfig
from pipeline.training.data import SlideBag
from pipeline.training.methods import get_method, list_methods
from pipeline.training.methods.base import Method, Resources

DIM, K = 32, 3
CLASSES = ["tumour", "normal"]
TREE = LabelTree.from_mapping({"lung": ["LUAD", "LUSC"], "kidney": ["CCRCC", "CHRCC", "PRCC"]})
CONFIG = TrainConfig(device="cpu")
#: small settings per method (config.yaml: train.method_settings)
SETTINGS = {"hivemil": {"n_ctx": 4}, "abmil_5x": {"hidden": 16}, "abmil_20x": {"hidden": 16},
            "hmil": {"hidden": 16, "fine_attention_hidden": 8}, "hila": {"hidden": 16, "heads": 2, "n_ctx": 4},
            "five": {"prompts": 2, "n_ctx": 2, "heads": 4}, "five_zeroshot": {"prompts": 2, "n_ctx": 2, "heads": 4}}
#: every (method, task type) a method registers for: a new method without explain() fails here
CASES = [(m, t) for m in list_methods() for t in get_method(m).task_types]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    from pipeline.features import create_backbone

    return create_backbone("tiny", weights="random", embed_dim=DIM)


def class_texts(classes: list[str]) -> list[str]:
    """16 distinct texts per class: 4 coarse, then 12 fine (the prompt file's order)."""
    return [f"{c} {level} {i}" for c in classes for level, n in (("coarse", 4), ("fine", 12)) for i in range(n)]


def make_task(task_type: str):
    from pipeline.training.tasks import Classification, Hierarchical
    from pipeline.training.tasks.survival import Survival

    if task_type == "classification":
        return Classification("t", CLASSES, {}, class_texts(CLASSES))
    if task_type == "hierarchical":
        return Hierarchical("t", list(TREE.fine), {}, class_texts(list(TREE.fine)), TREE)
    if task_type == "survival":
        names = [f"{level} attribute {i}" for level in ("region", "patch") for i in range(K)]
        return Survival("os", ["region", "patch"], {}, [f"an image of {n}" for n in names], None,
                        edges=[0.0, 100.0, 200.0, 300.0, 400.0], signs=[1.0, -1.0, 1.0] * 2, attributes=names)
    raise AssertionError(f"no test task for task type '{task_type}'")


def synthetic_bag(n: int = 7, seed: int = 0) -> SlideBag:
    """Random features with padding children (zeros, as in the feature files); every patch keeps one child."""
    g = torch.Generator().manual_seed(seed)
    x5, x20 = torch.randn(n, DIM, generator=g), torch.randn(n, 16, DIM, generator=g)
    mask = torch.rand(n, 16, generator=g) > 0.4
    mask[:, 0] = True
    x20[~mask] = 0.0
    return SlideBag("s", x5, x20, mask, np.zeros((n, 2)), np.zeros((n, 16, 2)))


def descriptions() -> FineGrainedLabels:
    """A question set over the classification task's classes (FiVE's queries and class descriptions)."""
    questions = {"questions": [{"field": "grade", "name": "grade", "question": "Which grade?", "answers": ["1", "2"]}],
                 "classes": {c: f"grade: {i + 1}" for i, c in enumerate(CLASSES)}}
    return FineGrainedLabels(parse_questions(json.dumps(questions), "test"))


def built(name: str, task_type: str, backbone) -> tuple[Method, torch.nn.Module, object]:
    torch.manual_seed(0)
    task = make_task(task_type)
    method = get_method(name)(CONFIG, task, SETTINGS.get(name))
    texts = torch.randn(len(task.texts), DIM, generator=torch.Generator().manual_seed(1))
    resources = Resources(embed_dim=DIM, device=torch.device("cpu"), logit_scale=float(backbone.logit_scale),
                          text_features=texts, backbone_factory=lambda: backbone, descriptions=descriptions())
    model = method.build(resources).eval()
    with torch.no_grad():
        cache = method.eval_cache(model)
    return method, model, cache


def explain(method: Method, model, cache, bag: SlideBag, target: int | None) -> PatchScores:
    return method.explain(model, bag, torch.device("cpu"), cache, target)


def target_of(task_type: str) -> int | None:
    return None if task_type == "survival" else 1


def perturbed(bag: SlideBag, scale: str, row: int, slot: int) -> SlideBag:
    g = torch.Generator().manual_seed(7)
    x5, x20 = bag.x5.clone(), bag.x20.clone()
    if scale == "5x":
        x5[row] += 2.0 * torch.randn(DIM, generator=g)
    else:
        x20[row, slot] += 2.0 * torch.randn(DIM, generator=g)
    return dataclasses.replace(bag, x5=x5, x20=x20)


@pytest.mark.parametrize("name,task_type", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_one_finite_score_per_real_patch_of_each_scale_read(name, task_type, backbone):
    method, model, cache = built(name, task_type, backbone)
    bag = synthetic_bag()
    scores = explain(method, model, cache, bag, target_of(task_type))
    assert isinstance(scores, PatchScores) and scores.kind
    reads = method.inputs
    assert bool(scores.maps_5x) == ("5x" in reads) and bool(scores.maps_20x) == ("20x" in reads), scores
    n, mask = len(bag.x5), bag.mask.numpy()
    for values in scores.maps_5x.values():
        assert values.shape == (n,) and np.isfinite(values).all()
    for values in scores.maps_20x.values():
        assert values.shape == (n, 16)
        assert np.array_equal(np.isnan(values), ~mask) and np.isfinite(values[mask]).all()


@pytest.mark.parametrize("name,task_type", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_a_patch_score_follows_that_patch_features(name, task_type, backbone):
    method, model, cache = built(name, task_type, backbone)
    bag = synthetic_bag()
    target = target_of(task_type)
    before = explain(method, model, cache, bag, target)
    row, slot = 2, int(np.flatnonzero(bag.mask[2].numpy())[-1])
    for scale, maps in (("5x", before.maps_5x), ("20x", before.maps_20x)):
        if not maps:
            continue
        after = explain(method, model, cache, perturbed(bag, scale, row, slot), target)
        moved = after.maps_5x if scale == "5x" else after.maps_20x
        assert set(moved) == set(maps)
        at = (row,) if scale == "5x" else (row, slot)
        unchanged = [m for m in maps if maps[m][at] == moved[m][at]]
        assert not unchanged, f"{name} {scale}: the score at the perturbed patch did not change in {unchanged}"


@pytest.mark.parametrize("name,task_type", [c for c in CASES if c[1] != "survival"],
                         ids=[f"{m}-{t}" for m, t in CASES if t != "survival"])
def test_no_target_explains_the_predicted_class(name, task_type, backbone):
    method, model, cache = built(name, task_type, backbone)
    bag = synthetic_bag(seed=3)
    with torch.no_grad():
        outputs = method.task.outputs(method.logits(model, bag, torch.device("cpu"), cache)[0])
    pred = method.task.prediction_frame(["s"], None, outputs[None])["pred"][0]
    own, asked = explain(method, model, cache, bag, None), explain(method, model, cache, bag,
                                                                    method.task.classes.index(pred))
    assert own.maps_5x.keys() == asked.maps_5x.keys() and own.maps_20x.keys() == asked.maps_20x.keys()
    for a, b in zip([*own.maps_5x.values(), *own.maps_20x.values()], [*asked.maps_5x.values(), *asked.maps_20x.values()]):
        assert np.array_equal(a, b, equal_nan=True)


def test_map_names_say_what_each_method_scored(backbone):
    bag = synthetic_bag()
    method, model, cache = built("hivemil", "classification", backbone)
    scores = explain(method, model, cache, bag, 1)
    texts = method.task.texts[16:32]
    assert list(scores.maps_5x) == texts[:4] and list(scores.maps_20x) == texts[4:]
    assert scores.kind == "image-text similarity"
    assert all(np.nanmax(np.abs(v)) <= 1 + 1e-5 for v in [*scores.maps_5x.values(), *scores.maps_20x.values()])
    method, model, cache = built("hmil", "hierarchical", backbone)
    scores = explain(method, model, cache, bag, 4)  # PRCC, a kidney subtype
    assert list(scores.maps_20x) == ["attention (coarse: kidney)", "attention (fine: PRCC)"]
    assert all(np.isclose(np.nansum(v), 1.0) for v in scores.maps_20x.values())  # softmax over the children
    method, model, cache = built("abmil_5x", "survival", backbone)
    assert np.isclose(explain(method, model, cache, bag, None).maps_5x["attention"].sum(), 1.0)


def test_hivemil_children_filtered_out_of_the_graph_have_no_score(backbone):
    method, model, cache = built("hivemil", "classification", backbone)
    model.config.filter_at_eval = True  # TGDF at evaluation: unmatched 5x patches bring no children
    bag = synthetic_bag(n=12)
    scores = explain(method, model, cache, bag, 0)
    with torch.no_grad():
        graph = model(*bag.on(torch.device("cpu")), cache).graph
    seen = np.zeros((12, 16), bool)
    seen[graph.child_parent.numpy(), graph.child_slot.numpy()] = True
    assert seen.sum() < bag.mask.sum()  # some real children were filtered out
    assert all(np.array_equal(~np.isnan(v), seen) for v in scores.maps_20x.values())
    assert all(np.isfinite(v).all() for v in scores.maps_5x.values())  # every 5x patch is a node
    # the reference code's zero-padded children are graph nodes, but no patch: they have no score either
    model.config.keep_padded_children = True
    scores = explain(method, model, cache, bag, 0)
    with torch.no_grad():
        graph = model(*bag.on(torch.device("cpu")), cache).graph
    padded = ~bag.mask.numpy()[graph.child_parent.numpy(), graph.child_slot.numpy()]
    assert padded.any()
    seen = np.zeros((12, 16), bool)
    seen[graph.child_parent.numpy(), graph.child_slot.numpy()] = True
    assert all(np.array_equal(~np.isnan(v), seen & bag.mask.numpy()) for v in scores.maps_20x.values())


@pytest.mark.parametrize("name", ["hila", "prompt_risk"])
def test_transport_mass_is_one_on_average_with_the_attribute_weights(name, backbone):
    method, model, cache = built(name, "survival", backbone)
    bag = synthetic_bag()
    scores = explain(method, model, cache, bag, None)
    names = method.task.attributes
    assert list(scores.maps_5x) == names[:K] and list(scores.maps_20x) == names[K:]
    assert list(scores.weights_5x) == names[:K] and list(scores.weights_20x) == names[K:]
    for values in scores.maps_5x.values():  # each attribute's weights over the regions, x N: mean 1
        assert np.isclose(values.mean(), 1.0, atol=1e-3) and (values >= 0).all()
    for values in scores.maps_20x.values():
        assert np.isclose(np.nanmean(values), 1.0, atol=1e-3)
    # a patient without a valid child: no 20x score anywhere, the 5x maps still there
    empty = dataclasses.replace(bag, mask=torch.zeros_like(bag.mask), x20=torch.zeros_like(bag.x20))
    scores = explain(method, model, cache, empty, None)
    assert all(np.isnan(v).all() for v in scores.maps_20x.values())
    assert all(np.isfinite(v).all() for v in scores.maps_5x.values())


def test_hmil_without_children_explains_the_5x_patches_it_falls_back_to(backbone):
    method, model, cache = built("hmil", "hierarchical", backbone)
    bag = synthetic_bag()
    empty = dataclasses.replace(bag, mask=torch.zeros_like(bag.mask), x20=torch.zeros_like(bag.x20))
    scores = explain(method, model, cache, empty, 0)
    assert not scores.maps_20x and all(v.shape == (len(bag.x5),) for v in scores.maps_5x.values())


def test_a_method_without_explain_names_itself():
    method = get_method("abmil_5x")(CONFIG, make_task("classification"))
    with pytest.raises(NotImplementedError, match="abmil_5x"):
        Method.explain(method, None, synthetic_bag(), torch.device("cpu"), None, None)


# --- the ensemble mean ---------------------------------------------------------------------------------------------


def test_mean_scores_is_nan_aware_name_by_name():
    nan = np.nan
    a = PatchScores({"t": np.array([1.0, 2.0]), "only a": np.array([5.0, nan])},
                    {"t": np.array([[1.0] + [nan] * 15, [nan] * 16])}, "attention", {"t": 0.2})
    b = PatchScores({"t": np.array([3.0, nan])}, {"t": np.array([[3.0, 4.0] + [nan] * 14, [nan] * 16])},
                    "attention", {"t": 0.4})
    mean = mean_scores([a, b])
    assert np.array_equal(mean.maps_5x["t"], [2.0, 2.0])  # the second patch: only a's score
    assert np.array_equal(mean.maps_5x["only a"], [5.0, nan], equal_nan=True)
    assert mean.maps_20x["t"][0, 0] == 2.0 and mean.maps_20x["t"][0, 1] == 4.0  # a child one model did not see
    assert np.isnan(mean.maps_20x["t"][0, 2:]).all() and np.isnan(mean.maps_20x["t"][1]).all()
    assert mean.kind == "attention" and mean.weights_5x == pytest.approx({"t": 0.3})
    assert mean_scores([a]).maps_5x["t"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="kinds"):
        mean_scores([a, dataclasses.replace(b, kind="transport mass")])
    with pytest.raises(ValueError):
        mean_scores([])


def test_patch_scores_check_shapes_and_scatter_places_children():
    with pytest.raises(ValueError, match="20x maps"):
        PatchScores({}, {"t": np.zeros((3, 4))}, "attention")
    with pytest.raises(ValueError, match="one N"):
        PatchScores({"a": np.zeros(3)}, {"t": np.zeros((4, 16))}, "attention")
    out = scatter_children(np.array([1.0, 2.0]), np.array([0, 2]), np.array([5, 15]), 3)
    assert out.shape == (3, 16) and out[0, 5] == 1.0 and out[2, 15] == 2.0 and np.isnan(out).sum() == 46


@pytest.mark.parametrize("name", ["five", "five_zeroshot"])
def test_five_maps_each_query_prompts_attention_over_the_children_it_read(name, backbone):
    method, model, cache = built(name, "classification", backbone)
    bag = synthetic_bag()
    scores = explain(method, model, cache, bag, 0)
    assert list(scores.maps_20x) == ["query: grade", "learnable prompt 1", "learnable prompt 2"] and not scores.maps_5x
    assert all(np.isclose(np.nanmean(v), 1.0, atol=1e-4) for v in scores.maps_20x.values())  # 1 = a uniform share
    # each map's weight: how far its query pulls the slide embedding towards the explained class's description
    other = explain(method, model, cache, bag, 1)
    assert list(scores.weights_20x) == list(scores.maps_20x) and np.isfinite(list(scores.weights_20x.values())).all()
    assert scores.weights_20x != other.weights_20x
    method.settings = dataclasses.replace(method.settings, eval_instances="spaced", sample_ratio=0.5)
    spaced = explain(method, model, method.eval_cache(model), bag, 0)
    read = ~np.isnan(spaced.maps_20x["query: grade"])
    assert read.sum() == int(bag.mask.sum()) // 2 and not (read & ~bag.mask.numpy()).any()
