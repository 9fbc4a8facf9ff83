"""HLSS attribute files: the shipped descriptions, validation, file resolution and the head-initialising embeddings."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Any, Callable

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.pretrain import attributes as attr_mod
from pipeline.pretrain.attributes import (
    SHIPPED_DIR,
    Attribute,
    HlssAttributeError,
    HlssAttributes,
    embed_attributes,
    load_hlss_attributes,
    parse_hlss_attributes,
    resolve_attribute_file,
    shipped_attribute_file,
    write_hlss_attributes,
)
from pipeline.pretrain.model import LEVELS

SHIPPED = ("demo", "tcga_nsclc", "tcga_brca", "tcga_rcc", "tcga_organ", "generic")


def minimal() -> dict[str, Any]:
    """A small valid file: two attributes per level, two texts each."""
    return {
        level: [
            {"attribute": f"{level}_a", "texts": [f"{level} first text of a.", f"{level} second text of a."]},
            {"attribute": f"{level}_b", "texts": [f"{level} first text of b.", f"{level} second text of b."]},
        ]
        for level in LEVELS
    }


def problems_of(obj: Any) -> list[str]:
    with pytest.raises(HlssAttributeError) as info:
        parse_hlss_attributes(obj, "mem.json")
    assert "mem.json" in str(info.value)
    return info.value.problems


# --- shipped files ------------------------------------------------------------------------------------------------


def test_every_expected_file_is_shipped():
    assert {p.stem for p in SHIPPED_DIR.glob("*.json")} == set(SHIPPED)
    assert (SHIPPED_DIR / "SOURCES.md").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_loads_and_is_sized_for_its_role(name):
    attrs = load_hlss_attributes(SHIPPED_DIR / f"{name}.json")
    lo, hi, texts_lo, texts_hi = (4, 8, 2, 3) if name == "demo" else (6, 8, 3, 4)
    for level in LEVELS:
        assert lo <= attrs.sizes()[level] <= hi, (name, level)
        assert all(texts_lo <= len(t) <= texts_hi for t in attrs.texts(level)), (name, level)
    # distinct descriptions: no sentence is reused anywhere in the file
    flat = [" ".join(t.lower().split()) for level in LEVELS for ts in attrs.texts(level) for t in ts]
    assert len(flat) == len(set(flat))


# --- the object ---------------------------------------------------------------------------------------------------


def test_to_json_round_trips_and_accessors_follow_file_order():
    obj = minimal()
    attrs = parse_hlss_attributes(obj, "mem.json")
    assert attrs.to_json() == obj
    assert parse_hlss_attributes(attrs.to_json(), "again.json").levels == attrs.levels
    assert attrs.names("slide") == ["slide_a", "slide_b"]
    assert attrs.texts("patient")[1] == ["patient first text of b.", "patient second text of b."]
    assert attrs.sizes() == {"patch": 2, "slide": 2, "patient": 2}
    assert attrs.levels["patch"][0] == Attribute("patch_a", ("patch first text of a.", "patch second text of a."))
    with pytest.raises(KeyError, match="tile"):
        attrs.names("tile")


def test_digest_is_canonical_stable_and_content_sensitive():
    obj = minimal()
    digest = parse_hlss_attributes(obj, "a.json").digest()
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert parse_hlss_attributes(copy.deepcopy(obj), "elsewhere.json").digest() == digest  # source is not content

    edited = copy.deepcopy(obj)
    edited["slide"][1]["texts"][0] += " Edited."
    assert parse_hlss_attributes(edited, "a.json").digest() != digest

    reordered = copy.deepcopy(obj)
    reordered["patch"].reverse()  # head rows follow file order, so order is content
    assert parse_hlss_attributes(reordered, "a.json").digest() != digest


# --- validation ---------------------------------------------------------------------------------------------------


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


RULES = [
    ("missing level", lambda o: o.pop("patient"), "missing level 'patient'"),
    ("unknown top key", _set(("tiles",), []), "unknown top-level key(s) ['tiles']"),
    ("level not a list", _set(("slide",), {"a": 1}), "slide: must be a list"),
    ("entry not an object", _set(("patch", 0), "nuclei"), "patch[0]: must be an object"),
    ("unknown entry key", _set(("patch", 1, "weight"), 2), "patch[1] 'patch_b': unknown key(s) ['weight']"),
    ("missing texts", lambda o: o["slide"][0].pop("texts"), "slide[0] 'slide_a': missing key(s) ['texts']"),
    ("missing name", lambda o: o["slide"][0].pop("attribute"), "slide[0]: missing key(s) ['attribute']"),
    ("too few attributes", lambda o: o["slide"].pop(), "slide: has 1 attribute(s) (need at least 2)"),
    ("duplicate name", _set(("patient", 1, "attribute"), "patient_a"), "'patient_a' is used more than once"),
    ("not snake_case", _set(("patch", 0, "attribute"), "Nuclear-Size"), "'Nuclear-Size' is not snake_case"),
    ("leading digit", _set(("patch", 0, "attribute"), "2nd_grade"), "'2nd_grade' is not snake_case"),
    ("name not a string", _set(("patch", 0, "attribute"), 7), "7 is not snake_case"),
    ("no texts", _set(("patch", 0, "texts"), []), "has 0 texts (need 1-8)"),
    ("too many texts", _set(("patch", 0, "texts"), [f"Text {i}." for i in range(9)]), "has 9 texts (need 1-8)"),
    ("texts not a list", _set(("patch", 0, "texts"), "one text"), "'texts' must be a list of strings"),
    ("empty text", _set(("slide", 1, "texts", 0), "   "), "slide[1] 'slide_b': text 1 must be a non-empty string"),
    ("text not a string", _set(("slide", 1, "texts", 1), 3), "text 2 must be a non-empty string, got 3"),
    ("duplicate text", _set(("patient", 0, "texts", 1), "  PATIENT first  text of a. "), "text 2 duplicates text 1"),
    ("too long", _set(("patch", 1, "texts", 0), " ".join(["word"] * 61)), "text 1 has 61 words (at most 60)"),
]


@pytest.mark.parametrize("mutate, expected", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_names_its_problem(mutate, expected):
    obj = minimal()
    mutate(obj)
    problems = problems_of(obj)
    assert any(expected in p for p in problems), problems


def test_limits_themselves_are_accepted():
    obj = minimal()
    obj["patch"][0]["texts"] = [" ".join([f"w{i}"] * 60) for i in range(8)]  # 8 texts of exactly 60 words
    obj["patch"][1]["texts"] = ["One text is enough."]
    obj["slide"][0]["attribute"] = "a1_b2"
    obj["slide"].append({"attribute": "patch_a", "texts": ["Names only need to be unique within a level."]})
    attrs = parse_hlss_attributes(obj, "mem.json")
    assert attrs.sizes()["slide"] == 3


def test_every_problem_is_listed_once_one_per_line():
    obj = minimal()
    obj.pop("slide")
    obj["extra"] = 1
    obj["patch"][0]["attribute"] = "Bad Name"
    obj["patient"][1]["texts"] = ["", "ok text"]
    with pytest.raises(HlssAttributeError) as info:
        parse_hlss_attributes(obj, "cohort/attrs.json")
    err = info.value
    assert isinstance(err, PipelineError)
    assert len(err.problems) == 4, err.problems
    lines = str(err).splitlines()
    assert "cohort/attrs.json" in lines[0]
    assert len(lines) == 1 + 4 and all(line.startswith("  - ") for line in lines[1:])
    for fragment in ("missing level 'slide'", "['extra']", "'Bad Name' is not snake_case", "text 1 must be"):
        assert sum(fragment in line for line in lines) == 1, fragment


def test_top_level_must_be_an_object():
    assert "top level must be an object" in problems_of(["patch"])[0]


# --- files --------------------------------------------------------------------------------------------------------


def test_write_then_load_round_trips(tmp_path):
    attrs = load_hlss_attributes(SHIPPED_DIR / "tcga_nsclc.json")
    dest = tmp_path / "sub" / "mine.json"
    write_hlss_attributes(dest, attrs)
    again = load_hlss_attributes(dest)
    assert again.levels == attrs.levels and again.digest() == attrs.digest()
    assert again.source == str(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["mine.json"]  # no temporary file left behind


def test_write_refuses_invalid_attributes_and_leaves_no_file(tmp_path):
    bad = HlssAttributes("mem", {level: (Attribute("only_one", ("A text.",)),) for level in LEVELS})
    dest = tmp_path / "bad.json"
    with pytest.raises(HlssAttributeError, match="need at least 2"):
        write_hlss_attributes(dest, bad)
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(HlssAttributeError, match="nope.json") as info:
        load_hlss_attributes(missing)
    assert "cannot read" in str(info.value)

    broken = tmp_path / "broken.json"
    broken.write_text('{"patch": [\n  {"attribute": "a",}\n]}')
    with pytest.raises(HlssAttributeError, match="broken.json") as info:
        load_hlss_attributes(broken)
    assert "invalid JSON at line 2" in str(info.value)

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"patch": [], "slide": [], "patient": []}))
    with pytest.raises(HlssAttributeError, match="invalid.json") as info:
        load_hlss_attributes(invalid)
    assert len(info.value.problems) == 3


# --- resolution ---------------------------------------------------------------------------------------------------


def test_given_file_wins_over_the_cohort_file(tmp_path, caplog):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(minimal()))
    with caplog.at_level(logging.WARNING):
        assert resolve_attribute_file(mine, "tcga_nsclc") == mine
        assert resolve_attribute_file(str(mine), None) == mine
    assert not caplog.records


def test_missing_given_file_is_an_error_even_with_a_shipped_cohort(tmp_path):
    with pytest.raises(HlssAttributeError, match="absent.json") as info:
        resolve_attribute_file(tmp_path / "absent.json", "tcga_nsclc")
    assert "pretrain.attributes" in str(info.value)


@pytest.mark.parametrize("cohort", ["tcga_nsclc", "demo", "tcga_rcc"])
def test_cohort_file_is_used_silently(cohort, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_attribute_file(None, cohort) == SHIPPED_DIR / f"{cohort}.json"
    assert not caplog.records


@pytest.mark.parametrize("cohort", ["my_melanoma", None])
def test_unknown_cohort_falls_back_to_generic_with_a_warning(cohort, caplog):
    with caplog.at_level(logging.WARNING, logger=attr_mod.__name__):
        assert resolve_attribute_file(None, cohort) == SHIPPED_DIR / "generic.json"
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "generic.json" in message and "pretrain.attributes" in message
    if cohort:
        assert cohort in message


def test_shipped_lookup_takes_names_not_paths():
    assert shipped_attribute_file("tcga_brca") == SHIPPED_DIR / "tcga_brca.json"
    assert shipped_attribute_file("tcga_brca.json") == SHIPPED_DIR / "tcga_brca.json"
    assert shipped_attribute_file("TCGA_BRCA") == SHIPPED_DIR / "tcga_brca.json"
    assert shipped_attribute_file("unknown_cohort") is None
    assert shipped_attribute_file("../hlss/generic") is None
    assert shipped_attribute_file("") is None


# --- embeddings ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    from pipeline.features.registry import create_backbone

    return create_backbone("tiny", weights="random", seed=0)


@pytest.fixture(scope="module")
def demo_attrs() -> HlssAttributes:
    return load_hlss_attributes(SHIPPED_DIR / "demo.json")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embeddings_are_normalised_means_of_normalised_texts(tiny, demo_attrs, monkeypatch):
    from pipeline.features.text import encode_texts

    calls: list[int] = []

    def counting(backbone, texts, batch_size=64):
        calls.append(len(texts))
        return encode_texts(backbone, texts, batch_size)

    monkeypatch.setattr("pipeline.features.text.encode_texts", counting)
    emb = embed_attributes(tiny, demo_attrs)
    assert calls == [sum(len(t) for t in demo_attrs.texts(level)) for level in LEVELS]  # one call per level

    assert list(emb) == list(LEVELS)
    for level in LEVELS:
        rows = emb[level]
        assert rows.shape == (demo_attrs.sizes()[level], tiny.embed_dim) and rows.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
        cos = rows @ rows.T
        assert cos[~np.eye(len(rows), dtype=bool)].max() < 1 - 1e-6  # attributes stay distinct rows
        for i, texts in enumerate(demo_attrs.texts(level)):
            expected = _unit(_unit(encode_texts(tiny, texts).astype(np.float64)).mean(axis=0))
            np.testing.assert_allclose(rows[i], expected, atol=1e-5)


def test_embeddings_do_not_depend_on_batch_size(tiny, demo_attrs):
    small = embed_attributes(tiny, demo_attrs, batch_size=5)
    large = embed_attributes(tiny, demo_attrs, batch_size=64)
    for level in LEVELS:
        np.testing.assert_allclose(small[level], large[level], atol=1e-5)

