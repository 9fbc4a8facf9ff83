"""The results layout: every path a rule reads or writes, relative to `output_dir`, defined once here.

Patterns use Snakemake wildcards ({slide}, {backbone}, {task}, {split}, {run}, {method}, {k}); the rules prefix them with
the output folder and hand the package explicit file lists, so no stage rebuilds a path from a folder.
"""

from __future__ import annotations

#: the demo's generated slides; the GDC's downloads go to `gdc.slides_dir` (not the output folder) as GDC_SLIDE
DEMO_SLIDES_DIR = "demo/slides"
DEMO_SLIDE = DEMO_SLIDES_DIR + "/{slide}.tiff"
GDC_SLIDE = "{slide}.svs"
#: the GDC query: its manifest, the labelled cohort sheet and a summary
GDC_MANIFEST = "gdc/manifest.tsv"
GDC_COHORT = "gdc/cohort.csv"
GDC_SUMMARY = "gdc/summary.json"
TISSUE_MASK = "tissue/{slide}.png"
TISSUE_GEOJSON = "tissue/{slide}.geojson"
TISSUE_STATS = "tissue/{slide}.json"
QC_TISSUE = "qc/tissue/{slide}.png"
QC_PATCHES = "qc/patches/{slide}.png"
PATCHES = "patches/{slide}.h5"
FEATURES_5X = "features/{backbone}/{backbone}_5x/{slide}.h5"
FEATURES_20X = "features/{backbone}/{backbone}_20x/{slide}.h5"
#: features.slides_per_job > 1 or shared_decode: one job extracts a chunk of slides with every backbone into this
#: folder; each slide's files are then linked into FEATURES_5X / FEATURES_20X (a failed slide leaves CHUNK_FAILED
#: with its reason instead)
EXTRACT_CHUNK = "features/chunks/{chunk}"
CHUNK_5X = "{backbone}/{slide}_5x.h5"
CHUNK_20X = "{backbone}/{slide}_20x.h5"
CHUNK_FAILED = "{slide}.failed.json"
HIERARCHICAL = "features/{backbone}/hierarchical_{backbone}_5x_20x/{slide}.h5"
HIERARCHY_REPORT = "hierarchy/{backbone}/{slide}.json"
HIERARCHY_SUMMARY = "hierarchy/{backbone}/summary.csv"
TEXT_EMBEDDINGS = "features/{backbone}/text_{task}.h5"
SHEET = "cohort/sheet.csv"
DATASET = "cohort/dataset.csv"
DROPPED = "cohort/dropped.csv"
PROMPTS = "cohort/prompts/{task}.json"
#: {split}: the shot count of a few-shot task (HiVE-MIL's `{task}_{shots}` folders) or `cv{folds}` of a survival task
SPLITS_DIR = "splits/{task}_{split}"
SPLIT = SPLITS_DIR + "/splits_{k}.csv"
SPLITS_META = SPLITS_DIR + "/splits_meta.json"
#: {run}: `{shots}shot` of a few-shot task, `cv{folds}` of a survival task (its task type's RunScheme, pipeline.training.tasks.base)
RUN_DIR = "models/{task}/{backbone}/{run}"
METHOD_DIR = RUN_DIR + "/{method}"
CHECKPOINT = METHOD_DIR + "/checkpoints/fold{k}.pt"
METHOD_SUMMARY = METHOD_DIR + "/summary.csv"
METHOD_PREDICTIONS = METHOD_DIR + "/predictions.csv"
METHOD_PLOTS = METHOD_DIR + "/plots"
METHOD_CURVES = METHOD_DIR + "/curves"
METHOD_ATTRIBUTES = METHOD_DIR + "/attributes.csv"
RESULTS = RUN_DIR + "/results.csv"
RUN_SUMMARY = RUN_DIR + "/summary.csv"
RUN_COMPARISON = RUN_DIR + "/comparison.md"
RUN_COMPARISON_CSV = RUN_DIR + "/comparison.csv"
TASK_COMPARISON = "models/{task}/comparison.md"
TASK_COMPARISON_CSV = "models/{task}/comparison.csv"
#: the reports stage: its index table, one text per case in REPORTS_TEXTS ({case}.txt), and the GDC's report PDFs
#: in REPORTS_PDF (a download cache, kept across reruns, so not an output)
REPORTS_INDEX = "reports/index.csv"
REPORTS_TEXTS = "reports/texts"
REPORTS_PDF = "reports/pdf"
DEMO_REPORTS = "demo/reports.csv"
DEMO_DESCRIPTIONS = "demo/descriptions.csv"
#: a FiVE task's checked question set, its descriptions, the cases without one, and the LLM's per-case answers
QUESTIONS = "cohort/questions/{task}.json"
DESCRIPTIONS_DIR = "descriptions/{task}"
DESCRIPTIONS = DESCRIPTIONS_DIR + "/descriptions.csv"
DESCRIPTIONS_FAILED = DESCRIPTIONS_DIR + "/failed.csv"
DESCRIPTIONS_CACHE = DESCRIPTIONS_DIR + "/cache"
PREDICT_DIR = "predictions/{task}/{backbone}/{run}/{method}"
#: prediction: the table, the slides that could not be scored, and per slide the files of pipeline.explain.slide_outputs
PREDICTIONS = PREDICT_DIR + "/predictions.csv"
PREDICT_UNSCORED = PREDICT_DIR + "/unscored.csv"
PREDICT_TOP_PATCHES = PREDICT_DIR + "/top_patches"
PREDICT_OVERLAYS = PREDICT_DIR + "/overlays"
PREDICT_HEATMAPS = PREDICT_DIR + "/heatmaps"
PREDICT_GALLERY = PREDICT_DIR + "/gallery"
STATUS_DIR = "status"
STATUS_TABLE = "status.csv"
#: HLSS pretraining: the tile pool of the pretraining slides, and per `{vlm}_hlss` backbone its checkpoint (the
#: backbone's weights), resumable state, loss per step and curve, and the kNN / zero-shot table per task
PRETRAIN_TILES = "pretrain/tiles.h5"
HLSS_DIR = "pretrain/{backbone}"
HLSS_CHECKPOINT = HLSS_DIR + "/hlss.pt"
HLSS_STATE = HLSS_DIR + "/state/last.pt"
HLSS_LOSSES = HLSS_DIR + "/losses.csv"
HLSS_CURVE = HLSS_DIR + "/loss.png"
HLSS_EVAL = HLSS_DIR + "/knn_{task}.csv"
HLSS_EVAL_MD = HLSS_DIR + "/knn_{task}.md"
