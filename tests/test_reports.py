"""The reports stage: text from a PDF's text layer (and a clear failure without one), the GDC source through the
loopback GDC server (verified, resumable downloads; per-case failures), the CSV source, and the demo's reports."""

from __future__ import annotations

import pytest

from pipeline.demo_cohort import demo_slides
from pipeline.demo_reports import case_fields, class_fields, report_text
from pipeline.descriptions.questions import UNKNOWN
from pipeline.errors import PipelineError
from pipeline.gdc.client import GdcClient, RetryPolicy
from pipeline.reports.collect import collect_reports, read_index
from pipeline.reports.pdf import NoTextLayer, ReportError, pdf_text

from gdc_server import FakeFile, Fault, GdcServer


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(lines: list[str] | None) -> bytes:
    """A minimal valid one-page PDF: Helvetica text lines, or (None) an empty page as a scan without OCR leaves."""
    stream = b""
    if lines is not None:
        ops = ["BT /F1 11 Tf 72 720 Td"] + [f"({_escape(t)}) Tj 0 -14 Td" for t in lines] + ["ET"]
        stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


REPORT = ["SURGICAL PATHOLOGY REPORT", "Lung, left upper lobe (resection): adenocarcinoma,",
          "moderately differentiated. Visceral pleural invasion present (PL1). Margins free (R0)."]


def test_the_text_layer_is_read_and_a_pdf_without_one_is_an_error_saying_so(tmp_path):
    good, scan, junk = tmp_path / "report.pdf", tmp_path / "scan.pdf", tmp_path / "junk.pdf"
    good.write_bytes(make_pdf(REPORT))
    scan.write_bytes(make_pdf(None))
    junk.write_bytes(b"this is no pdf at all")
    text = pdf_text(good)
    assert "moderately differentiated" in text and "Margins free (R0)" in text
    with pytest.raises(NoTextLayer, match=r"scan.pdf: 1 page\(s\) but no text layer .*reports.source: csv"):
        pdf_text(scan)
    with pytest.raises(ReportError, match="junk.pdf: not a readable PDF"):
        pdf_text(junk)


def report_file(name: str, case: str, lines: list[str] | None) -> FakeFile:
    return FakeFile(name, make_pdf(lines), "TCGA-LUAD", case, data_format="PDF", data_type="Pathology Report",
                    experimental_strategy="")


def test_gdc_reports_are_found_per_case_downloaded_verified_and_read_with_failures_per_case(tmp_path):
    files = [
        report_file("TCGA-AA-0001.pdf", "TCGA-AA-0001", REPORT),
        report_file("TCGA-AA-0002.pdf", "TCGA-AA-0002", None),  # a scan
        report_file("TCGA-AA-0004.pdf", "TCGA-AA-0004", ["Squamous cell carcinoma, keratinising."]),
        report_file("TCGA-ZZ-9999.pdf", "TCGA-ZZ-9999", ["not our cohort"]),
        FakeFile("TCGA-AA-0001-01Z-00-DX1.svs", b"slide", "TCGA-LUAD", "TCGA-AA-0001"),  # a slide, not a report
    ]
    cases = ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", "TCGA-AA-0004"]
    with GdcServer(files) as server:
        server.fault(files[2].file_id, Fault("drop", after=40))  # resumed with a Range request
        client = GdcClient(server.url, policy=RetryPolicy(retries=2, backoff_base=0.0, jitter=0.0))
        out = tmp_path / "reports"
        where = dict(texts_dir=out / "texts", index=out / "index.csv", pdf_dir=tmp_path / "cache" / "pdf")
        rows = {r.case_id: r for r in collect_reports(cases=cases, source="gdc", client=client, **where)}
        assert [rows[c].status for c in cases] == ["ok", "failed", "none", "ok"]
        assert "no text layer" in rows["TCGA-AA-0002"].reason and "no open-access" in rows["TCGA-AA-0003"].reason
        assert "moderately differentiated" in (out / "texts" / "TCGA-AA-0001.txt").read_text()
        assert (tmp_path / "cache" / "pdf" / f"{files[2].file_id}.pdf").read_bytes() == files[2].data
        assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
            "TCGA-AA-0001.txt", "TCGA-AA-0004.txt", "index.csv"]
        assert any("Range" in r.headers for r in server.data_requests(files[2].file_id))
        assert not server.data_requests(files[3].file_id) and not server.data_requests(files[4].file_id)
        downloads = len(server.data_requests())
        again = collect_reports(cases=cases, source="gdc", client=client, **where)
        assert len(server.data_requests()) == downloads  # verified PDFs are not fetched again
    assert read_index(out / "index.csv") == again


def test_a_reports_table_gives_each_case_its_text_and_says_which_have_none(tmp_path):
    table = tmp_path / "reports.csv"
    table.write_text('case_id,text\nC1,"Invasive lobular carcinoma.\nMargins negative."\nC2,"  "\nC9,unused\n')
    rows = {r.case_id: r for r in collect_reports(cases=["C1", "C2", "C3", "a/b"], source="csv",
                                                  texts_dir=tmp_path / "t", index=tmp_path / "r" / "index.csv",
                                                  table=table)}
    assert rows["C1"].status == "ok" and rows["C1"].chars > 20
    assert (tmp_path / "t" / "C1.txt").read_text() == "Invasive lobular carcinoma.\nMargins negative.\n"
    assert rows["C1"].text_file == str(tmp_path / "t" / "C1.txt")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["C1.txt", "index.csv", "reports.csv"]
    assert (rows["C2"].status, rows["C2"].reason) == ("failed", "the report text is empty")
    assert rows["C3"].status == "none" and "path separator" in rows["a/b"].reason
    table.write_text("case_id,text\nC1,a\nC1,b\n")
    with pytest.raises(PipelineError, match=r"listed more than once: \['C1'\]"):
        collect_reports(cases=["C1"], source="csv", texts_dir=tmp_path / "r", index=tmp_path / "i.csv", table=table)


def test_demo_reports_state_the_generators_fields_and_leave_a_few_unknown():
    slides = demo_slides(["regular_glands", "atypical_glands", "small_cell", "large_cell"], 5)
    cases = {s.case_id: s.label for s in slides}
    fields = {c: case_fields(label, c, seed=7) for c, label in cases.items()}
    unknown = sum(v == UNKNOWN for f in fields.values() for v in f.values())
    assert 0 < unknown < 0.35 * 5 * len(cases)
    for case, label in cases.items():
        truth = class_fields(label)
        assert all(v in (truth[f], UNKNOWN) for f, v in fields[case].items())
        text = report_text(case, fields[case])
        assert ("solid sheets" in text) == (fields[case]["growth_pattern"] == "solid sheets")
    assert class_fields("atypical_glands")["nuclear_size"] == "large" and class_fields("small_cell")["nuclear_size"] == "small"
    assert class_fields("large_cell")["nuclear_atypia"] == "marked" and class_fields("regular_glands")["nuclear_atypia"] == "mild"
