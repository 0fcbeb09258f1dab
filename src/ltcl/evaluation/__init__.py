"""The full evaluation report of a checkpoint (``ltcl eval``): per class, calibrated, under shifted test priors.

One idea per module: :mod:`.metrics` (confusion matrix, per-class accuracy / precision / recall, top-k, NLL),
:mod:`.calibration` (expected calibration error, reliability bins, temperature scaling), :mod:`.adjust` (post-hoc
logit adjustment, tau chosen on validation), :mod:`.priors` (SADE's test-agnostic resampled test sets and the
prior-corrected logits), :mod:`.gather` (a split's logits under torchrun, every image exactly once), :mod:`.tta`
(test-time augmentation: fixed crops, logits averaged), :mod:`.report` (the report assembled from the logits of
the splits), :mod:`.render` (the table and the files) and :mod:`.figures` (the confusion matrix, the reliability
diagram, the prior sweep). docs/conventions.md, "Evaluation report", fixes the choices.

Nothing is imported here: the command line's ``--help`` must not wait for torch.
"""
