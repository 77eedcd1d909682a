"""Ways to look at an attribution: granularity (words, sentences), spans, lookup by text, the HTML explorer, the
terminal view and plots. Nothing here computes attributions; every view reads inseq output objects."""

from .explorer import explore, write_explorer
from .granularity import aggregate_granularity
from .lookup import score_of
from .span import span_attribution

__all__ = ["aggregate_granularity", "explore", "score_of", "span_attribution", "write_explorer"]
