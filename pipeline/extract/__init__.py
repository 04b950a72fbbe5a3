"""The Ray extraction job: a collection table in, a region store out (resumable, embedded or on a
cluster). :func:`run_extract` is the entry point; ``itmflow extract`` is its command line."""

from pipeline.extract.config import ExtractConfig
from pipeline.extract.plan import Batch, Plan, WorkItem, make_plan
from pipeline.extract.job import ExtractSummary, run_extract

__all__ = ["Batch", "ExtractConfig", "ExtractSummary", "Plan", "WorkItem", "make_plan", "run_extract"]
