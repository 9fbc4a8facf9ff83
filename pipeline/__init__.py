"""hive-wsi: whole-slide images to few-shot HiVE-MIL predictions, stage by stage."""

__version__ = "0.1.0"
