"""The paper's analyses: gradient conflicts (Fig. 4a), embeddings (Fig. 5), plots."""

from ltcl.analysis.conflicts import gradient_conflict_ratio
from ltcl.losses.functional import gradient_conflict_counts

__all__ = ["gradient_conflict_counts", "gradient_conflict_ratio"]
