"""GDC source: query the NCI Genomic Data Commons, label a TCGA cohort, download verified slides.

`query` builds `manifest.tsv` and the cohort sheet, `download` fetches one file resumably, `client` holds the
retry policy and the token, `manifest` the gdc-client file format and safe names, `presets` the TCGA tasks.
"""

from pipeline.gdc.client import DEFAULT_API_URL, GdcClient, RetryPolicy, read_token
from pipeline.gdc.download import DownloadResult, download_file, download_slide
from pipeline.gdc.manifest import ManifestEntry, read_manifest, sanitize_filename, write_manifest
from pipeline.gdc.presets import PRESETS, TaskPreset, get_preset
from pipeline.gdc.query import COHORT_COLUMNS, build_filters, run_query

__all__ = [
    "COHORT_COLUMNS",
    "DEFAULT_API_URL",
    "DownloadResult",
    "GdcClient",
    "ManifestEntry",
    "PRESETS",
    "RetryPolicy",
    "TaskPreset",
    "build_filters",
    "download_file",
    "download_slide",
    "get_preset",
    "read_manifest",
    "read_token",
    "run_query",
    "sanitize_filename",
    "write_manifest",
]
