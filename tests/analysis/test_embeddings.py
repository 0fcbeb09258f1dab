"""Embeddings for Fig. 5: class selection by shot group, projections of the test images, t-SNE."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltcl.analysis.embeddings import collect_embeddings, select_classes, tsne_2d
from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import build_split
from ltcl.engine.inference import TrainedModel, load_trained_model

COUNTS = [500, 300, 150, 101, 100, 60, 20, 19, 10, 3]  # many 0-3, medium 4-6, few 7-9


def test_group_selection_is_seeded_and_stays_inside_the_group():
    chosen, notes = select_classes("many:2,few:2", COUNTS, seed=3)
    assert notes == [] and len(chosen) == 4
    assert set(chosen[:2]) <= {0, 1, 2, 3} and set(chosen[2:]) <= {7, 8, 9}
    assert COUNTS[chosen[0]] >= COUNTS[chosen[1]]  # largest first within a group
    assert select_classes("many:2,few:2", COUNTS, seed=3)[0] == chosen
    picks = {tuple(select_classes("many:2", COUNTS, seed=s)[0]) for s in range(10)}
    assert len(picks) > 1  # the seed does change the choice


def test_a_small_group_gives_what_it_has_with_a_note():
    chosen, notes = select_classes("medium:5,3", COUNTS)
    assert sorted(chosen[:3]) == [4, 5, 6] and chosen[3] == 3
    assert len(notes) == 1 and "only 3 medium-shot" in notes[0]


def test_explicit_indices_and_thresholds():
    assert select_classes("0, 3,7,3", COUNTS)[0] == [0, 3, 7]
    assert select_classes("many:10", COUNTS, many=200)[0] == [0, 1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("few:2", "asks for few-shot classes but this run has none"),
        ("rare:2", "names no shot group"),
        ("many:0", "positive number of classes"),
        ("12", "not a class index between 0 and 6"),
        (",", "selects no class"),
    ],
)
def test_bad_class_choices_are_clear_errors(spec, message):
    counts = COUNTS[:7]  # no class below 20 images: the few-shot group is empty
    with pytest.raises(ValueError, match=message):
        select_classes(spec, counts)


def test_projections_are_those_of_the_model_on_the_test_images(tiny_run):
    trained = load_trained_model(str(tiny_run / "checkpoint_last.pt"), device="cpu")
    emb = collect_embeddings(trained, [8, 2], batch_size=32)
    assert emb.kind == "projection"
    assert emb.vectors.shape == (100, trained.cfg.model.projection_dim)  # 50 test images per digit
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert emb.labels.tolist() == [8] * 50 + [2] * 50

    dataset = build_split(trained.cfg.data, "test", build_test_transform(trained.cfg.views))
    want = []
    for c in (8, 2):
        images = torch.stack([dataset[i][0] for i in np.flatnonzero(dataset.targets == c)])
        with torch.no_grad():
            want.append(trained.model(images).projections)
    assert np.allclose(emb.vectors, torch.cat(want).numpy(), atol=1e-5)


def test_at_most_n_images_per_class_and_features_without_a_head(tiny_run):
    trained = load_trained_model(str(tiny_run / "checkpoint_last.pt"), device="cpu")
    emb = collect_embeddings(trained, [0, 9], max_per_class=7, seed=1)
    assert np.bincount(emb.labels, minlength=10)[[0, 9]].tolist() == [7, 7]

    trained.model.projection = None  # a model trained without a contrastive term has no head
    headless = TrainedModel(
        trained.model,
        trained.cfg,
        trained.class_counts,
        trained.class_names,
        trained.device,
        trained.epoch,
        trained.amp,
    )
    emb = collect_embeddings(headless, [0], max_per_class=5)
    assert emb.kind == "features" and emb.vectors.shape == (5, trained.model.feature_dim)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_tsne_is_deterministic_for_a_seed_and_separates_clusters():
    rng = np.random.default_rng(0)
    centres = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=1).numpy()
    vectors = np.repeat(centres, 20, axis=0) + 0.02 * rng.normal(size=(60, 16))
    a, b = tsne_2d(vectors, seed=0), tsne_2d(vectors, seed=0)
    assert a.shape == (60, 2) and np.allclose(a, b)
    labels = np.repeat([0, 1, 2], 20)
    means = np.stack([a[labels == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(a[labels == k] - means[k], axis=1).max() for k in range(3))
    gaps = min(np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3))
    assert gaps > 2 * spread
    with pytest.raises(ValueError, match="at least 4 images"):
        tsne_2d(vectors[:3])
