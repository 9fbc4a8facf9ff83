"""Interpretability outputs a pathologist can open: readable heatmap PNGs and QuPath patch overlays.

- `pipeline.explain.heatmap`: per-patch scores painted over the slide overview, rendered at a fixed pixel
  size with a title, a wrapped subtitle and a labelled colour bar (`render_heatmap`), small multiples of
  several maps with one shared colour bar (`render_grid`), and the bare pixel overlay (`overlay`).
- `pipeline.explain.geojson`: one GeoJSON tile per 5x/20x patch with its scores as QuPath measurements
  (`write_patch_geojson`, `read_patch_geojson`).

Both are torch-free and import matplotlib/cv2 only inside functions: this package is imported while
Snakemake builds its DAG, where imports must stay light.
"""
