"""The paper's analyses: gradient conflicts (Fig. 4a), embeddings (Fig. 5), plots, sweeps and comparisons.

The plotting, t-SNE and sweep modules import matplotlib and scikit-learn; import them directly
(``from ltcl.analysis.plots import make_run_plots``) so that ``import ltcl.analysis`` stays light.
"""

from ltcl.analysis.conflicts import gradient_conflict_ratio
from ltcl.losses.functional import gradient_conflict_counts

__all__ = ["gradient_conflict_counts", "gradient_conflict_ratio"]
