"""Survival-attribute prompt files: the shipped ones load, bad ones are refused with every problem named, and the
text-embedding stage writes the two levels as its groups."""

import json

import pytest

from pipeline.attribute_prompts import (
    LEVELS,
    AttributePromptError,
    check_attribute_prompts,
    is_attribute_file,
    load_attribute_prompts,
)
from pipeline.prompt_files import shipped_prompt_files

SHIPPED = ["demo_survival", "tcga_nsclc_survival", "tcga_brca_survival", "tcga_rcc_survival"]


def _attr(name, risk="higher"):
    return {"attribute": name, "text": f"tissue showing {name}", "risk": risk}


@pytest.mark.parametrize("task", SHIPPED)
def test_shipped_attribute_prompts_load(task):
    path = shipped_prompt_files()[task]
    prompts = load_attribute_prompts(path)
    assert prompts.labels == list(LEVELS) and prompts.k >= 4
    assert len(prompts.signs()) == 2 * prompts.k and set(prompts.signs()) == {1.0, -1.0}
    # attribute k describes the same property at both levels (MCL pairs them)
    assert [a.name for a in prompts.levels["region"]] == [a.name for a in prompts.levels["patch"]]


def test_bad_file_lists_every_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "region": [_attr("a"), _attr("a"), {"attribute": "b", "text": "", "risk": "worse"}],
        "patch": [_attr("a"), _attr("b")],
    }))
    with pytest.raises(AttributePromptError) as err:
        load_attribute_prompts(path)
    message = str(err.value)
    assert "listed more than once" in message and "risk must be one of" in message and "empty" in message


def test_levels_need_the_same_number_of_attributes(tmp_path):
    path = tmp_path / "uneven.json"
    path.write_text(json.dumps({"region": [_attr("a"), _attr("b"), _attr("c")], "patch": [_attr("a"), _attr("b")]}))
    with pytest.raises(AttributePromptError, match="same number of attributes"):
        load_attribute_prompts(path)


def test_format_is_told_apart_from_hivemil_prompts(tmp_path):
    assert is_attribute_file({"region": [], "patch": []})
    assert not is_attribute_file({"LUAD": {"term": "text"}, "LUSC": {"term": "text"}})
    out = tmp_path / "checked.json"
    check_attribute_prompts(shipped_prompt_files()["demo_survival"], out)
    assert load_attribute_prompts(out).to_json_obj() == load_attribute_prompts(
        shipped_prompt_files()["demo_survival"]).to_json_obj()


def test_text_embeddings_of_attribute_prompts(tmp_path):
    from pipeline.features.text import embed_prompts
    from pipeline.formats import read_text_embeddings

    path = shipped_prompt_files()["demo_survival"]
    embed_prompts(path, tmp_path / "text.h5", "tiny", weights="random", device="cpu")
    emb = read_text_embeddings(tmp_path / "text.h5")
    prompts = load_attribute_prompts(path)
    assert emb.classes == ["region", "patch"] and emb.texts == prompts.group_texts()
    assert emb.embeddings.shape[:2] == (2, prompts.k)
