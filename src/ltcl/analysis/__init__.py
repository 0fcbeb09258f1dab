"""The paper's analyses: gradient conflicts (Fig. 4a), embeddings (Fig. 5), plots, sweeps and comparisons.

- :mod:`.conflicts`: the conflict ratio of a batch (Eq. 7) and of a run's recorded conflict rows.
- :mod:`.embeddings`: classes chosen by shot group, their projections, t-SNE.
- :mod:`.plots`, :mod:`.paper_plots`: drawing only, from plain arrays (matplotlib).
- :mod:`.run_plots`: reads run directories through ``RunDir`` and draws them (``make_run_plots``).
- :mod:`.sweep`, :mod:`.tables`: ``ltcl sweep`` and the mean ± std tables it shares with ``ltcl compare``.

The plotting, t-SNE and sweep modules import matplotlib and scikit-learn; import them directly
(``from ltcl.analysis.run_plots import make_run_plots``) so that ``import ltcl.analysis`` stays light.
"""

from ltcl.analysis.conflicts import gradient_conflict_ratio
from ltcl.losses.functional import gradient_conflict_counts

__all__ = ["gradient_conflict_counts", "gradient_conflict_ratio"]
