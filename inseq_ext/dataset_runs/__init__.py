"""Data-set runs: attribute thousands of prompts resumably, in one process or several, into Parquet shards.

* :func:`attribute_dataset` (``inseq-ext attribute-dataset``): the run.
* :func:`load_dataset_attributions`: its output as tables, and any example back as an inseq output.
* :func:`summarize_dataset_attributions` (``inseq-ext summarize``): the first statistics a researcher asks for.

This subpackage is named ``dataset_runs`` so that it never shadows Hugging Face's ``datasets`` package, which it
uses to read local ``datasets`` folders.
"""

from inseq_ext.dataset_runs.errors import DatasetRunError
from inseq_ext.dataset_runs.load import DatasetAttributions, load_dataset_attributions
from inseq_ext.dataset_runs.runner import DatasetRunResult, attribute_dataset
from inseq_ext.dataset_runs.summary import DatasetSummary, summarize_dataset_attributions

__all__ = [
    "DatasetAttributions",
    "DatasetRunError",
    "DatasetRunResult",
    "DatasetSummary",
    "attribute_dataset",
    "load_dataset_attributions",
    "summarize_dataset_attributions",
]
