"""Long-tailed datasets, the distribution-aware multi-view pipeline and deterministic sampling."""

from ltcl.data.longtail import longtail_counts, select_longtail_indices, shot_groups

__all__ = ["longtail_counts", "select_longtail_indices", "shot_groups"]
