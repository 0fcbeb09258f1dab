"""The multi-view pipeline: per-view transforms, distribution-aware view counts, collate and reassembly."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ltcl.config import ConfigError, ViewsConfig, load_config
from ltcl.data.augment import resolve_views, view_plan
from ltcl.data.views import (
    MultiViewBatch,
    MultiViewCollate,
    MultiViewTransform,
    assemble_views,
    build_multiview_transform,
    contrastive_view_counts,
)
from ltcl.models.backbones import input_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Per-class training counts around the shot-group boundaries: many > 100, medium 20..100, few < 20.
COUNTS = [500, 101, 100, 60, 20, 19, 3]


def _reference_counts(counts, per_group, many=100, few=20):
    """Slow reference: the shot-group rule written out class by class."""
    out = []
    for n in counts:
        group = 0 if n > many else (2 if n < few else 1)
        out.append(per_group[group])
    return out


class CifarViews(Dataset):
    """A few real CIFAR-10 images with the multi-view transform applied (module level: picklable)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


@pytest.fixture(scope="module")
def images():
    from tests.conftest import shared_file

    data = np.load(shared_file("cifar10_jpeg.npz"))
    offsets, blob = data["offsets_train"], data["jpeg_train"]
    picks = [c * 5000 + 3 for c in range(10)]
    return [Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB") for i in picks]


def _constant_items(sizes, labels):
    """Items whose view v of image b is filled with 100 * v + b, view v of side sizes[v]."""
    return [
        ([torch.full((3, s, s), float(100 * v + b)) for v, s in enumerate(sizes)], label)
        for b, label in enumerate(labels)
    ]


def test_multiview_transform_per_view_presets_and_sizes(images):
    cfg = ViewsConfig(num_views=4, presets=["cifar_autoaugment_cutout", "simclr"], sizes=[32, 32, 24, 16])
    transform = build_multiview_transform(cfg)
    assert len(transform) == 4
    views = transform(images[0])
    assert [tuple(v.shape) for v in views] == [(3, 32, 32), (3, 32, 32), (3, 24, 24), (3, 16, 16)]
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1]), "two views of the same image must be drawn independently"
    # The last preset repeats: views 1..3 use simclr, whose pipeline has no Cutout.
    names = [[type(step).__name__ for step in t.transforms] for t in transform.transforms]
    assert "Cutout" in names[0] and "RandomGrayscale" not in names[0]
    assert all("Cutout" not in n and "RandomGrayscale" in n for n in names[1:])


def test_multiview_transform_pickles_for_worker_processes(images):
    cfg = ViewsConfig(presets=["cifar_autoaugment_cutout", "simclr", "randaugstack"], sizes=[32, 24])
    transform = build_multiview_transform(cfg)
    copy = pickle.loads(pickle.dumps(transform))
    torch.manual_seed(5)
    first = transform(images[1])
    torch.manual_seed(5)
    again = copy(images[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_fewer_views_than_entries_use_the_first_entries(images):
    cfg = ViewsConfig(num_views=2, presets=["simclr", "cifar_autoaugment_cutout", "none"], sizes=[24, 16, 32])
    assert view_plan(cfg) == [("simclr", 24), ("cifar_autoaugment_cutout", 16)]
    transform = build_multiview_transform(cfg)
    assert [tuple(v.shape) for v in transform(images[0])] == [(3, 24, 24), (3, 16, 16)]
    # More views than entries: the last entry repeats.
    assert view_plan(ViewsConfig(num_views=3, presets=["none", "simclr"], sizes=[32])) == [
        ("none", 32), ("simclr", 32), ("simclr", 32)
    ]  # fmt: skip


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*.yaml")))
def test_every_bundled_config_trains_on_one_view(path, images):
    """README: one view with the first preset at the first size; a longer list of presets is refused."""
    full = load_config(CONFIGS / path)
    first = [f"views.presets=[{full.views.presets[0]}]", f"views.sizes=[{full.views.sizes[0]}]"]
    one = load_config(CONFIGS / path, ["views.num_views=1", *first])
    if len(full.views.presets) > 1:
        with pytest.raises(ConfigError, match="views.presets has .* entries but views.num_views is 1"):
            load_config(CONFIGS / path, ["views.num_views=1", first[1]])
    # Sizes the model defines (0, foundation backbones) come from its input spec, read without weights.
    cfg = resolve_views(one.views, input_spec(one.model))
    assert view_plan(cfg) == view_plan(resolve_views(full.views, input_spec(full.model)))[:1]
    assert len(build_multiview_transform(cfg)(images[0])) == 1


def test_bad_view_settings_name_the_key():
    with pytest.raises(ValueError, match="views.num_views"):
        build_multiview_transform(ViewsConfig(num_views=0))
    with pytest.raises(ValueError, match="views.sizes"):
        build_multiview_transform(ViewsConfig(sizes=[]))
    with pytest.raises(ValueError, match="views.sizes must hold positive"):
        build_multiview_transform(ViewsConfig(sizes=[32, -8]))
    with pytest.raises(ValueError, match="A views.sizes entry is 0 .*resolve_views"):
        build_multiview_transform(ViewsConfig(sizes=[32, 0]))
    with pytest.raises(ValueError, match="views.presets names unknown preset 'simclr2'"):
        build_multiview_transform(ViewsConfig(presets=["simclr", "simclr2"]))
    with pytest.raises(ValueError, match="at least one view"):
        MultiViewTransform([])


def test_distribution_aware_counts_follow_shot_groups():
    cfg = ViewsConfig(num_views=4, contrastive_views=[2, 3, 4])
    counts = contrastive_view_counts(COUNTS, cfg)
    assert counts.dtype == torch.long and counts.tolist() == _reference_counts(COUNTS, [2, 3, 4])
    assert counts.tolist() == [2, 2, 3, 3, 3, 4, 4]  # the boundaries 100 and 20 are medium

    cfg = ViewsConfig(num_views=3, contrastive_views=[1, 3, 2])
    thresholds = contrastive_view_counts(torch.tensor(COUNTS), cfg, many=50, few=5)
    assert thresholds.tolist() == _reference_counts(COUNTS, [1, 3, 2], many=50, few=5)


def test_distribution_aware_counts_are_capped_at_the_number_of_views():
    # A 1-view baseline keeps the default [2, 3, 4]: every image offers the one view it has.
    assert contrastive_view_counts(COUNTS, ViewsConfig(num_views=1)).tolist() == [1] * len(COUNTS)
    capped = contrastive_view_counts(COUNTS, ViewsConfig(num_views=3, contrastive_views=[2, 3, 4]))
    assert capped.tolist() == [min(k, 3) for k in _reference_counts(COUNTS, [2, 3, 4])]


def test_uniform_counts_use_every_view():
    # contrastive_views is ignored in uniform mode, even when it would be invalid
    cfg = ViewsConfig(num_views=3, contrastive_mode="uniform", contrastive_views=[9, 9])
    assert contrastive_view_counts(COUNTS, cfg).tolist() == [3] * len(COUNTS)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"contrastive_views": [2, 3]}, "views.contrastive_views"),
        ({"contrastive_views": [0, 3, 4]}, "views.contrastive_views"),
        ({"contrastive_mode": "balanced"}, "views.contrastive_mode"),
        ({"num_views": 0}, "views.num_views"),
    ],
)
def test_bad_view_counts_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        contrastive_view_counts(COUNTS, ViewsConfig(**overrides))


def test_collate_masks_2_3_4_views_for_many_medium_few():
    view_counts = contrastive_view_counts(COUNTS, ViewsConfig())
    labels = [0, 3, 6, 2, 5, 1]  # many, medium, few, medium (100), few (19), many (101)
    batch = MultiViewCollate(view_counts)(_constant_items([32, 32, 32, 32], labels))
    assert isinstance(batch, MultiViewBatch)
    assert batch.batch_size == 6 and batch.num_views == 4
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == labels
    assert batch.contrastive_mask.dtype == torch.bool and batch.contrastive_mask.shape == (4, 6)
    assert batch.contrastive_mask.sum(dim=0).tolist() == [2, 3, 4, 3, 4, 2]
    for v in range(4):
        for b, label in enumerate(labels):
            assert bool(batch.contrastive_mask[v, b]) == (v < _reference_counts(COUNTS, [2, 3, 4])[label])


def test_collate_uniform_mode_masks_every_view():
    view_counts = contrastive_view_counts(COUNTS, ViewsConfig(contrastive_mode="uniform"))
    batch = MultiViewCollate(view_counts)(_constant_items([32] * 4, [0, 6, 3]))
    assert batch.contrastive_mask.all()


def test_groups_by_size_largest_first_and_view_major():
    sizes = [32, 16, 32, 24]  # groups: 32 -> views 0 and 2, 24 -> view 3, 16 -> view 1
    labels = [0, 1, 2]
    batch = MultiViewCollate(torch.tensor([2, 3, 4]))(_constant_items(sizes, labels))
    assert batch.group_views == [[0, 2], [3], [1]]
    assert [tuple(g.shape) for g in batch.groups] == [(6, 3, 32, 32), (3, 3, 24, 24), (3, 3, 16, 16)]
    for group, views in zip(batch.groups, batch.group_views):
        for j, v in enumerate(views):
            for b in range(len(labels)):
                assert (group[j * len(labels) + b] == 100 * v + b).all()


def test_assemble_views_groups_whole_batch_views_as_the_collate_does():
    sizes, labels = [32, 16, 32, 24], [0, 1, 2]
    items = _constant_items(sizes, labels)
    collated = MultiViewCollate(torch.tensor([2, 3, 4]))(items)
    views = [torch.stack([item[0][v] for item in items]) for v in range(len(sizes))]  # (B, 3, S_v, S_v) each
    assembled = assemble_views(views, torch.tensor(labels), torch.tensor([2, 3, 4]))
    assert assembled.group_views == collated.group_views
    assert all(torch.equal(a, b) for a, b in zip(assembled.groups, collated.groups))
    assert torch.equal(assembled.contrastive_mask, collated.contrastive_mask)
    assert assembled.groups[1] is views[3]  # a one-view group is not copied


@pytest.mark.parametrize("sizes", [[32, 16, 32, 24], [32, 32, 24, 16], [32, 32, 32, 32]])
def test_reassembly_recovers_view_order_and_keeps_gradients(sizes):
    batch = MultiViewCollate(torch.tensor([2, 3, 4]))(_constant_items(sizes, [0, 1, 2, 2]))
    # A stand-in "model": one scalar per row (the constant), plus a learnable weight to check gradients.
    weight = torch.ones((), requires_grad=True)
    outputs = [g.mean(dim=(1, 2, 3)) * weight for g in batch.groups]
    expected = torch.tensor([[100.0 * v + b for b in range(4)] for v in range(4)])

    # The engine-style recipe written out: view(V_g, B) -> rows group_views[g].
    manual = torch.empty(4, 4)
    for out, views in zip(outputs, batch.group_views):
        manual[views] = out.detach().view(len(views), 4)
    assert torch.equal(manual, expected)

    reassembled = batch.reassemble(outputs)
    assert reassembled.shape == (4, 4) and torch.equal(reassembled.detach(), expected)
    reassembled.sum().backward()
    assert weight.grad == expected.sum()

    features = batch.reassemble([torch.stack([o, -o], dim=1) for o in outputs])  # trailing dims travel
    assert features.shape == (4, 4, 2) and torch.equal(features[..., 1].detach(), -expected)


def test_collate_inside_a_dataloader_with_two_workers(images):
    cfg = ViewsConfig(
        num_views=4, presets=["cifar_autoaugment_cutout", "cifar_autoaugment_cutout", "simclr"], sizes=[32, 32, 24, 16]
    )
    dataset = CifarViews(images, [0, 1, 2, 3, 4, 5, 6, 0, 1, 2], build_multiview_transform(cfg))
    view_counts = contrastive_view_counts(COUNTS, cfg)
    loader = DataLoader(
        dataset, batch_size=4, num_workers=2, pin_memory=False, collate_fn=MultiViewCollate(view_counts)
    )
    batches = list(loader)
    assert [b.batch_size for b in batches] == [4, 4, 2]
    assert torch.cat([b.labels for b in batches]).tolist() == dataset.labels
    for batch in batches:
        assert batch.group_views == [[0, 1], [2], [3]]
        assert [g.shape[-1] for g in batch.groups] == [32, 24, 16]
        b = batch.batch_size
        assert [g.shape[0] for g in batch.groups] == [2 * b, b, b]
        assert torch.equal(batch.contrastive_mask.sum(dim=0), view_counts[batch.labels])


def test_batch_to_moves_every_tensor_and_pickles():
    collate = MultiViewCollate(torch.tensor([2, 3, 4]))
    collate = pickle.loads(pickle.dumps(collate))
    batch = collate(_constant_items([32, 16], [0, 2]))
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in [*moved.groups, moved.labels, moved.contrastive_mask])
    assert moved.group_views == batch.group_views and batch.labels.device.type == "cpu"
    same = batch.to("cpu", non_blocking=True)
    assert all(torch.equal(a, b) for a, b in zip(same.groups, batch.groups))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_and_cuda_transfer():
    batch = MultiViewCollate(torch.tensor([2, 3, 4]))(_constant_items([32, 16], [0, 2]))
    pinned = batch.pin_memory()
    assert all(t.is_pinned() for t in [*pinned.groups, pinned.labels, pinned.contrastive_mask])
    on_gpu = pinned.to("cuda", non_blocking=True)
    assert torch.equal(on_gpu.groups[1].cpu(), batch.groups[1]) and on_gpu.labels.is_cuda


def test_collate_errors():
    collate = MultiViewCollate(torch.tensor([2, 3, 4]))
    items = _constant_items([32, 32], [0, 1])
    items[1] = (items[1][0][:1], 1)
    with pytest.raises(ValueError, match="same number of views"):
        collate(items)
    with pytest.raises(ValueError, match="group outputs"):
        collate(_constant_items([32, 16], [0])).reassemble([torch.zeros(2)])


def test_first_views_keeps_the_rows_of_the_leading_views_of_every_size_group():
    b = 3
    # views 0 and 1 at 4 px, views 2 and 3 at 2 px; each pixel holds 10 * view + image
    groups = [
        torch.stack([torch.full((3, 4, 4), float(10 * v + i)) for v in (0, 1) for i in range(b)]),
        torch.stack([torch.full((3, 2, 2), float(10 * v + i)) for v in (2, 3) for i in range(b)]),
    ]
    batch = MultiViewBatch(groups, [[0, 1], [2, 3]], torch.arange(b), torch.ones(4, b, dtype=torch.bool))
    assert batch.first_views(4) is batch
    three = batch.first_views(3)
    assert three.group_views == [[0, 1], [2]] and three.num_views == 3
    assert [g[:, 0, 0, 0].tolist() for g in three.groups] == [[0, 1, 2, 10, 11, 12], [20, 21, 22]]
    one = batch.first_views(1)
    assert one.group_views == [[0]] and [g[:, 0, 0, 0].tolist() for g in one.groups] == [[0, 1, 2]]
    assert one.reassemble([g[:, 0, 0, 0] for g in one.groups]).tolist() == [[0, 1, 2]]
