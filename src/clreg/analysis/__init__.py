"""The paper's analyses (docs/algorithms.md §9) as tools for any benchmark and model: all measures on one run, SI's bias,
gradient noise; streamed statistics and figures."""
from clreg.analysis.run import KINDS, analyze, analyze_together
from clreg.analysis.stats import ScatterSample, StreamingCorrelation, slope_through_origin

__all__ = ["KINDS", "ScatterSample", "StreamingCorrelation", "analyze", "analyze_together", "slope_through_origin"]
