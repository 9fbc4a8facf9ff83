"""Synthetic pathology reports for the demo cohort, and their descriptions, so the offline demo trains FiVE with
no LLM.

Each demo patient's report states what the generator drew for its class (pipeline.demo.STYLES): the growth pattern
and lumens its morphology implies, the size of its nuclei (mean radius), how densely they lie (rings in stroma, or
sheets at the class's spacing) and their atypia (nuclei larger than the morphology's plain subtype's). A few fields
per cohort are left out of a report, seeded per case, and their answer is "Unknown", as in real reports. The
descriptions are what a faithful reader of each report answers to the demo question set
(pipeline/data/questions/demo.json): the same field values, written next to the reports.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from pipeline.demo import STYLES, slide_seed
from pipeline.demo_cohort import DemoSlide
from pipeline.descriptions.questions import UNKNOWN, QuestionSet
from pipeline.descriptions.table import write_descriptions
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic

#: chance that a report is silent on a field
SILENT = 0.15
FIELDS = ("growth_pattern", "lumens", "nuclear_size", "nuclear_density", "nuclear_atypia")
#: mean nuclear radius (px at 0.5 um/px) below which nuclei are small, above which large
SMALL_BELOW, LARGE_ABOVE = 4.5, 6.0
#: solid-sheet spacing (px) at or below which nuclei are dense
DENSE_SPACING = 12.0
SENTENCES = {
    "growth_pattern": {"glands": "The tumour forms glands.", "solid sheets": "The tumour grows in solid sheets."},
    "lumens": {"present": "Open gland lumens are present.", "absent": "No lumens are seen."},
    "nuclear_size": {"small": "The nuclei are small.", "medium": "The nuclei are of medium size.",
                     "large": "The nuclei are large."},
    "nuclear_density": {"sparse": "They lie sparsely in the stroma.", "moderate": "They are moderately packed.",
                        "dense": "They are densely packed."},
    "nuclear_atypia": {"mild": "Nuclear atypia is mild.", "marked": "Nuclear atypia is marked."},
}


def class_fields(label: str) -> dict[str, str]:
    """The field values a demo class's drawing parameters imply (before any report leaves one out)."""
    if label not in STYLES:
        raise PipelineError(f"unknown demo class '{label}'; choose from {sorted(STYLES)}")
    morphology, (r_min, r_max), spacing = STYLES[label]
    radius = (r_min + r_max) / 2
    _, (b_min, b_max), _ = STYLES[morphology]  # the plain morphology draws as its first subtype
    glands = morphology == "glandular"
    size = "small" if radius < SMALL_BELOW else "large" if radius > LARGE_ABOVE else "medium"
    if glands:
        density = "sparse" if radius <= LARGE_ABOVE else "moderate"
    else:
        density = "dense" if spacing <= DENSE_SPACING else "moderate"
    return {
        "growth_pattern": "glands" if glands else "solid sheets",
        "lumens": "present" if glands else "absent",
        "nuclear_size": size,
        "nuclear_density": density,
        "nuclear_atypia": "marked" if radius > (b_min + b_max) / 2 else "mild",
    }


def case_fields(label: str, case_id: str, seed: int) -> dict[str, str]:
    """One patient's report fields: the class's values, each left out (UNKNOWN) with chance SILENT, seeded per case."""
    rng = np.random.default_rng(slide_seed(seed, "report:" + case_id))
    silent = rng.random(len(FIELDS)) < SILENT
    return {f: UNKNOWN if s else v for (f, v), s in zip(class_fields(label).items(), silent)}


def report_text(case_id: str, fields: dict[str, str]) -> str:
    """A short free-text report stating the known fields (an UNKNOWN field is simply not mentioned)."""
    findings = " ".join(SENTENCES[f][v] for f, v in fields.items() if v != UNKNOWN)
    return (f"SURGICAL PATHOLOGY REPORT\nPatient: {case_id}\nSpecimen: tissue section (synthetic demo cohort).\n"
            f"Microscopic description: {findings or 'Not assessable.'}")


def check_demo_questions(questions: QuestionSet) -> None:
    """The demo's descriptions answer the demo question set: same fields, and every value allowed."""
    if tuple(questions.fields) != FIELDS:
        raise PipelineError(f"question set {questions.source}: the demo reports answer the fields {list(FIELDS)}, "
                            f"not {questions.fields}; use pipeline/data/questions/demo.json")
    for f, sentences in SENTENCES.items():
        q = questions.question(f)
        wrong = [v for v in sentences if q.canonical(v) != v]
        if wrong:
            raise PipelineError(f"question set {questions.source}: field '{f}' does not allow {wrong}")


def write_demo_reports(reports_csv: PathLike, descriptions_csv: PathLike, slides: list[DemoSlide], seed: int,
                       questions: QuestionSet) -> int:
    """The reports table (case_id,text) and the descriptions table of every labelled demo patient; returns the
    number of patients."""
    check_demo_questions(questions)
    labels = {s.case_id: s.label for s in slides if s.label}
    fields = {case: case_fields(label, case, seed) for case, label in sorted(labels.items())}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "text"])
    for case, values in fields.items():
        writer.writerow([case, report_text(case, values)])
    write_text_atomic(reports_csv, buf.getvalue())
    write_descriptions(descriptions_csv, questions, fields)
    return len(fields)
