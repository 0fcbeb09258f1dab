"""Embeddings of a trained model for Fig. 5: pick classes by shot group, collect projections, run t-SNE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.engine.inference import TrainedModel, evaluation_split
from ltcl.errors import UserError

GROUP_INDEX = {name: g for g, name in enumerate(SHOT_GROUPS)}


@dataclass
class Embeddings:
    """L2-normalised vectors of images of the chosen classes.

    Attributes:
        vectors: (n, D) float32, unit rows.
        labels: (n,) int64 class indices.
        kind: "projection" (the contrastive head's output) or "features" (backbone, when there is no head).
    """

    vectors: np.ndarray
    labels: np.ndarray
    kind: str


def select_classes(
    spec: str, counts: list[int], *, many: int = 100, few: int = 20, seed: int = 0
) -> tuple[list[int], list[str]]:
    """Reads ``--classes``: ``many:5,few:5`` (random classes of a shot group, seeded) or ``0,3,7`` (indices).

    Items may be mixed. A group with fewer classes than asked gives all it has, with a note.

    Returns:
        class indices (groups in the order asked, each sorted by training count, largest first) and notes.

    Raises:
        ValueError: an unknown group, a bad number, an index out of range, or a group without any class.
    """
    groups = shot_groups(counts, many=many, few=few).numpy()
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    notes: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if ":" in item:
            name, _, k_text = item.partition(":")
            name = name.strip().lower()
            if name not in GROUP_INDEX:
                raise UserError(f"--classes item '{item}' names no shot group; use many:K, medium:K or few:K.")
            if not k_text.strip().isdigit() or int(k_text) < 1:
                raise UserError(f"--classes item '{item}' needs a positive number of classes after the colon.")
            members = np.flatnonzero(groups == GROUP_INDEX[name])
            members = members[~np.isin(members, chosen)]
            if members.size == 0:
                raise UserError(
                    f"--classes asks for {name}-shot classes but this run has none (training "
                    f"counts {min(counts)} to {max(counts)}; many > {many}, few < {few})."
                )
            k = int(k_text)
            if members.size < k:
                notes.append(f"only {members.size} {name}-shot class(es) exist; using all of them instead of {k}.")
            picked = rng.choice(members, size=min(k, members.size), replace=False)
            chosen += sorted(picked.tolist(), key=lambda j: (-counts[j], j))
        else:
            if not item.isdigit() or int(item) >= len(counts):
                raise UserError(
                    f"--classes item '{item}' is not a class index between 0 and "
                    f"{len(counts) - 1} nor a group such as many:5."
                )
            if int(item) not in chosen:
                chosen.append(int(item))
    if not chosen:
        raise UserError(f"--classes '{spec}' selects no class; use e.g. many:5,few:5 or 0,3,7.")
    return chosen, notes


@torch.no_grad()
def collect_embeddings(
    trained: TrainedModel,
    classes: list[int],
    *,
    split: str = "test",
    max_per_class: int = 0,
    seed: int = 0,
    batch_size: int = 0,
) -> Embeddings:
    """Unit-norm projections (or backbone features) of the ``split`` images of ``classes``.

    Args:
        trained: a model from :func:`ltcl.engine.inference.load_trained_model` (its config gives the data).
        classes: class indices to keep.
        max_per_class: keep at most this many images per class, chosen at random with ``seed`` (0: all).
        batch_size: evaluation batch size (0: the config's ``data.eval_batch_size``).
    """
    cfg = trained.cfg
    dataset = evaluation_split(trained, split)
    targets = dataset.targets
    rng = np.random.default_rng(seed)
    indices = []
    for c in classes:  # one iteration per chosen class
        members = np.flatnonzero(targets == c)
        if max_per_class and members.size > max_per_class:
            members = np.sort(rng.choice(members, size=max_per_class, replace=False))
        indices.append(members)
    keep = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    if keep.size == 0:
        raise UserError(f"The '{split}' split has no image of the chosen classes {classes}.")
    loader = DataLoader(
        Subset(dataset, keep.tolist()), batch_size=batch_size or cfg.data.eval_batch_size, num_workers=0
    )
    model = trained.model.eval()
    vectors, labels, kind = [], [], "projection"
    for images, batch_labels in loader:
        out = model(images.to(trained.device), with_projection=True)
        if out.projections is None:
            kind = "features"
            z = F.normalize(out.features.float(), dim=1)
        else:
            z = out.projections.float()
        vectors.append(z.cpu())
        labels.append(torch.as_tensor(batch_labels))
    return Embeddings(torch.cat(vectors).numpy(), torch.cat(labels).numpy().astype(np.int64), kind)


def tsne_2d(vectors: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation, fixed ``random_state``) of (n, D) vectors -> (n, 2).

    The perplexity is lowered to ``(n - 1) / 3`` for small sets, since t-SNE needs it below n.
    """
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 4:
        raise UserError(f"t-SNE needs at least 4 images, got {n}; choose more classes or a larger --max-per-class.")
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(np.asarray(vectors, dtype=np.float32)).astype(np.float64)
