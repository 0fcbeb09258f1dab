"""Evaluation under torch.distributed scores exactly the dataset once: 2 gloo processes, 7 images (not divisible
by 2), a disjoint shard each, gathered back in dataset order; the logits and the per-class counts equal one
process's."""

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from ltcl.evaluation.gather import predict_dataset
from ltcl.evaluation.metrics import confusion_matrix

WORLD, IMAGES, CLASSES = 2, 7, 3


class Out(NamedTuple):
    logits: torch.Tensor
    projections: torch.Tensor | None = None


class Tiny(nn.Module):
    num_classes = CLASSES

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, CLASSES)

    def forward(self, images, with_projection=False):
        return Out(self.linear(images))


def dataset():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(IMAGES, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2]))


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        logits, labels = predict_dataset(Tiny(), dataset(), torch.device("cpu"), batch_size=2)
        torch.save({"logits": logits, "labels": labels}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_score_every_image_once_in_dataset_order(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    want_logits, want_labels = predict_dataset(Tiny(), dataset(), torch.device("cpu"), batch_size=2)
    assert want_labels.tolist() == [0, 1, 2, 0, 1, 2, 2]
    want = confusion_matrix(want_labels, want_logits.argmax(1), CLASSES)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["labels"].tolist() == want_labels.tolist()  # 7 images, none twice, none dropped
        torch.testing.assert_close(got["logits"], want_logits)
        assert torch.equal(confusion_matrix(got["labels"], got["logits"].argmax(1), CLASSES), want)
        assert torch.bincount(got["labels"], minlength=CLASSES).tolist() == [2, 2, 3]
