"""Synthetic demo cohort: one slide, the label sheet, or the patients' reports and their descriptions.

Slides are small pyramidal JPEG-tiled TIFFs generated deterministically from the cohort seed and the slide id:
`glandular` slides show rings of nuclei around pale lumens, `solid` slides dense sheets of small dark nuclei, and
each has two subtypes that differ in 20x detail (see pipeline.demo). `reports` writes each labelled patient's
synthetic pathology report (case_id,text) and, with --descriptions-out, the answers to the demo question set that
those reports give (pipeline.demo_reports), so FiVE trains offline with no LLM.
"""

from __future__ import annotations

import argparse

from pipeline import demo

NAME = "demo"
HELP = "generate a synthetic demo slide, the demo cohort sheet, or its reports and descriptions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["slide", "sheet", "reports"])
    parser.add_argument("--out", required=True, help="slide .tiff, sheet .csv or reports .csv to write")
    parser.add_argument("--slide-id", help="slide to generate (slide mode), e.g. demo_solid_03")
    parser.add_argument("--seed", type=int, default=7, help="the cohort seed (slides' pixels, sheet's survival times)")
    parser.add_argument("--classes", nargs="+", required=True, choices=demo.CLASSES,
                        help="the cohort's classes (config.yaml demo.classes), in order")
    parser.add_argument("--slides-per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096, help="level-0 side in px")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--slides-dir", default="", help="(sheet mode) folder holding the demo slides")
    parser.add_argument("--extra", nargs="*", default=[], help="(sheet mode) extra unlabelled slides as id=path")
    parser.add_argument("--questions", default="", help="(reports mode) the demo question set the descriptions answer")
    parser.add_argument("--descriptions-out", default="", help="(reports mode) descriptions .csv to write")


def run(args: argparse.Namespace) -> int:
    slides = demo.demo_slides(args.classes, args.slides_per_class)
    if args.what == "sheet":
        extra = []
        for item in args.extra:
            sid, _, path = item.partition("=")
            extra.append({"slide_id": sid, "case_id": sid, "label": "", "file": path})
        demo.write_demo_sheet(args.out, slides, args.slides_dir, extra, demo.demo_survival(slides, args.seed))
        return 0
    if args.what == "reports":
        from pipeline.demo_reports import write_demo_reports
        from pipeline.descriptions.questions import load_questions, shipped_question_sets

        if not args.descriptions_out:
            raise SystemExit("demo reports: give --descriptions-out")
        questions = load_questions(args.questions or shipped_question_sets()["demo"])
        write_demo_reports(args.out, args.descriptions_out, slides, args.seed, questions)
        return 0
    by_id = {s.slide_id: s for s in slides}
    if args.slide_id not in by_id:
        raise SystemExit(f"unknown demo slide '{args.slide_id}'; the cohort has {sorted(by_id)}")
    demo.make_demo_slide(args.out, args.slide_id, by_id[args.slide_id].label, args.seed, args.size, args.mpp)
    return 0
