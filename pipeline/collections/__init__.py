"""Image collections: adapters for Karpathy / COCO / Flickr30k / folder layouts, the collection
table (one Parquet row per image) and its validation."""

from pipeline.collections.records import SPLITS, CaptionRecord, Collection, ImageRecord
from pipeline.collections.table import read_collection, read_collection_meta, write_collection

__all__ = ["SPLITS", "CaptionRecord", "Collection", "ImageRecord", "read_collection",
           "read_collection_meta", "write_collection"]
