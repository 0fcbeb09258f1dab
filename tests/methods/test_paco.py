"""The ``paco`` method: its momentum key encoder (made in bind, averaged after each step, never trained), its queue
of labelled keys (a ring buffer; the global batch under torchrun, the same on every process), its views, its
statistics, its configs, and a digits run that resumes bit-exactly."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ltcl.config import ConfigError, LossConfig, load_config
from ltcl.losses.paco import PaCoLoss
from ltcl.methods import ObjectiveSetup, StepRecord, resolve_config
from ltcl.methods.paco import PaCo, PaCoSection, shared_permutation
from ltcl.models.network import NetworkOutput
from tests.engine.test_training import DIGITS, TINY, assert_reported, evaluated_again, straight_and_resumed

REPO = Path(__file__).resolve().parents[2]
COUNTS = (30, 12, 5, 2)
IN_DIM, FEATURES, DIM = 5, 7, 4


class TinyNet(nn.Module):
    """The network's interface (backbone features, classifier, normalised projections) in a few float64 layers;
    ``batch_norm`` puts a BatchNorm in the projection head, as PaCo's MLP has."""

    def __init__(self, batch_norm=False):
        super().__init__()
        torch.manual_seed(5)
        self.backbone = nn.Linear(IN_DIM, FEATURES)
        norm = [nn.BatchNorm1d(FEATURES)] if batch_norm else []
        self.projection = nn.Sequential(nn.Linear(FEATURES, FEATURES), *norm, nn.ReLU(), nn.Linear(FEATURES, DIM))
        self.classifier = nn.Linear(FEATURES, len(COUNTS))
        self.double()

    def forward(self, x, with_projection=True):
        features = torch.tanh(self.backbone(x))
        projections = F.normalize(self.projection(features), dim=1) if with_projection else None
        return NetworkOutput(self.classifier(features), features, projections)


def make_objective(gather=False, **section):
    setup = ObjectiveSetup(
        class_counts=COUNTS,
        loss=LossConfig(objective="paco", temperature=0.2),
        section=PaCoSection(**{"alpha": 0.3, "queue_size": 8, "momentum": 0.9, **section}),
        projection_dim=DIM,
        feature_dim=FEATURES,
        num_views=2,
        gather_distributed=gather,
    )
    return PaCo(setup).double()


def batches(steps, batch=3, views=2, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(views * batch, IN_DIM, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (batch,), generator=g),
        )
        for _ in range(steps)
    ]


def step_record(model, images, labels, views=2):
    out = model(images)
    return StepRecord(
        logits=out.logits,
        labels=labels.repeat(views),
        projections=out.projections,
        contrastive_mask=torch.ones(views * labels.numel(), dtype=torch.bool),
        num_views=views,
        batch_size=labels.numel(),
        model=model,
        images=[images],
        group_views=[list(range(views))],
    )


def train(model, objective, data, lr=0.1):
    """The engine's step, reduced: forward, the objective, backward, SGD, after_step. Returns the losses and
    statistics of every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    records = []
    for images, labels in data:
        step = step_record(model, images, labels)
        out = objective(step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.after_step(step)
        records.append({"loss": out.loss.item(), **{k: v.item() for k, v in out.parts.items()}})
    return records


def test_bind_makes_a_frozen_copy_that_follows_the_network_by_momentum():
    model, objective = TinyNet(), make_objective(momentum=0.9)
    objective.bind(model)
    key = objective.key_encoder
    assert key is not model and all(not p.requires_grad for p in key.parameters())
    assert [p for p in objective.parameters() if p.requires_grad] == []  # nothing of it reaches the optimiser
    for a, b in zip(key.parameters(), model.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert any(k.startswith("key_encoder.") for k in objective.state_dict())  # checkpointed with the objective
    before = [p.clone() for p in key.parameters()]
    images, labels = batches(1)[0]
    step = step_record(model, images, labels)
    objective(step).loss.backward()
    assert all(p.grad is None for p in key.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    objective.after_step(step)
    for k, old, q in zip(key.parameters(), before, model.parameters()):
        torch.testing.assert_close(k, 0.9 * old + 0.1 * q, rtol=0, atol=1e-15)


def test_the_query_is_view_1_the_key_view_2_through_the_key_encoder():
    model, objective = TinyNet(batch_norm=True), make_objective(queue_size=8)
    objective.bind(model)
    train(model, objective, batches(2))  # a queue with keys, a key encoder away from the network
    images, labels = batches(1, seed=4)[0]
    step = step_record(model, images, labels)
    queue, queue_labels, filled = objective.queue.clone(), objective.queue_labels.clone(), int(objective.queue_filled)
    out = objective(step)
    with torch.no_grad():
        keys = objective.key_encoder(images[3:]).projections  # view 2 alone: train-mode batch-norm on the keys
    torch.testing.assert_close(objective._pending[0], keys, rtol=0, atol=0)
    mask = torch.cat([torch.ones(3, dtype=torch.bool), torch.arange(8) < filled])
    want = PaCoLoss(COUNTS, alpha=0.3, temperature=0.2)(
        step.projections[:3], labels, step.logits[:3], torch.cat([keys, queue]), torch.cat([labels, queue_labels]), mask
    )
    assert out.loss.item() == pytest.approx(want.loss.item(), rel=1e-13)
    assert set(out.parts) == set(objective.stat_names) == {"queue_fill", "positives"}
    assert out.parts["queue_fill"].item() == 6 / 8
    assert out.parts["positives"].item() == pytest.approx(want.positives.double().mean().item())


def test_the_queue_is_a_ring_of_the_latest_keys_with_their_labels():
    model, objective = TinyNet(), make_objective(queue_size=5)  # 3 keys per step: wraps inside a step
    objective.bind(model)
    data = batches(4)
    written, labels_written = [], []
    fills = []
    for images, labels in data:
        step = step_record(model, images, labels)
        out = objective(step)
        fills.append(out.parts["queue_fill"].item())
        written.append(objective._pending[0].clone())
        labels_written.append(labels)
        objective.after_step(step)
    assert fills == [0.0, 3 / 5, 1.0, 1.0]  # the fill when the loss was computed
    keys, labels = torch.cat(written), torch.cat(labels_written)  # keys 0..11 went to slots 0..4, 0..4, 0, 1
    slots = torch.arange(12) % 5
    for slot in range(5):
        last = int((slots == slot).nonzero().max())
        assert torch.equal(objective.queue[slot], keys[last]), slot
        assert int(objective.queue_labels[slot]) == int(labels[last])
    assert int(objective.queue_ptr) == 12 % 5 and int(objective.queue_filled) == 5 and int(objective.steps) == 4


def test_a_batch_larger_than_the_queue_keeps_its_last_keys():
    model, objective = TinyNet(), make_objective(queue_size=2)
    objective.bind(model)
    images, labels = batches(1)[0]
    step = step_record(model, images, labels)
    objective(step)
    keys = objective._pending[0].clone()
    objective.after_step(step)
    assert torch.equal(objective.queue, keys[1:]) and objective.queue_labels.tolist() == labels[1:].tolist()


def test_the_views_come_from_the_groups_as_forwarded():
    b = 2
    big, small = torch.arange(2 * b).double()[:, None], 10 + torch.arange(2 * b).double()[:, None]
    step = StepRecord(torch.zeros(4 * b, 3), torch.zeros(4 * b, dtype=torch.int64), None,
                      torch.ones(4 * b, dtype=torch.bool), 4, b, nn.Identity(), images=[big, small],
                      group_views=[[0, 2], [1, 3]])  # fmt: skip
    assert step.view_images(1).flatten().tolist() == [10.0, 11.0]  # view 2 is the first of the second group
    assert step.view_images(2).flatten().tolist() == [2.0, 3.0]


def test_the_shared_permutation_is_a_permutation_that_changes_with_the_step():
    perms = [shared_permutation(64, torch.tensor(s)) for s in range(3)]
    assert all(sorted(p.tolist()) == list(range(64)) for p in perms)
    assert not torch.equal(perms[0], perms[1]) and torch.equal(perms[2], shared_permutation(64, torch.tensor(2)))


def test_configs_are_refused_without_a_key_view():
    paco = ["loss.objective=paco"]
    resolve_config(load_config(DIGITS, paco))
    with pytest.raises(ConfigError, match="views.num_views"):
        resolve_config(load_config(DIGITS, [*paco, "views.num_views=1", "views.presets=[digits]", "views.sizes=[32]",
                                            "views.contrastive_views=[1,1,1]"]))  # fmt: skip
    with pytest.raises(ConfigError, match="loss.paco.alpha and loss.paco.beta"):
        resolve_config(load_config(DIGITS, [*paco, "loss.paco.alpha=0", "loss.paco.beta=0"]))
    with pytest.raises(ConfigError, match="loss.paco.momentum"):
        resolve_config(load_config(DIGITS, [*paco, "loss.paco.momentum=1.0"]))


@pytest.mark.parametrize("name", ["cifar10_lt_if100_paco", "cifar100_lt_if100_paco", "imagenet_lt_x50_paco"])
def test_the_rival_configs_parse(name):
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / f"{name}.yaml"))
    assert cfg.loss.objective == "paco" and cfg.views.num_views == 2
    assert cfg.model.projection_bn and cfg.model.classifier == "linear"
    section = cfg.loss.sections["paco"]
    want = (0.05, 8192, 0.07) if name.startswith("imagenet") else (0.01, 1024, 0.05)
    assert (section["alpha"], section["queue_size"], cfg.loss.temperature) == want
    assert section["momentum"] == 0.999 and section["beta"] == section["gamma"] == 1.0


# ------------------------------------------------------------------------------------------------------------
# Two processes (gloo) under DDP, each with half of every batch, against one process on the global batch.

WORLD = 2


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = TinyNet()
        ddp = nn.parallel.DistributedDataParallel(model)
        objective = make_objective(gather=True, queue_size=10)
        objective.bind(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for images, labels in batches(4, batch=4):
            mine = slice(2 * rank, 2 * rank + 2)
            local_images = torch.cat([images[:4][mine], images[4:][mine]])  # view 1, then view 2 of my images
            out = ddp(local_images)
            step = StepRecord(out.logits, labels[mine].repeat(2), out.projections, torch.ones(4, dtype=torch.bool),
                              2, 2, model, images=[local_images], group_views=[[0, 1]])  # fmt: skip
            loss = objective(step).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            objective.after_step(step)
            losses.append(loss.item())
        state = {k: v.clone() for k, v in objective.state_dict().items()}
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save({"losses": losses, "state": state, "model": weights}, os.path.join(out_dir, f"{rank}"))
        del ddp
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_one_queue_and_train_as_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    model, objective = TinyNet(), make_objective(queue_size=10)
    objective.bind(model)
    single = train(model, objective, batches(4, batch=4))
    ranks = [torch.load(tmp_path / f"{r}", weights_only=True) for r in range(WORLD)]
    for got in ranks:
        assert got["losses"] == pytest.approx([r["loss"] for r in single], rel=1e-10)
        for key, value in objective.state_dict().items():  # queue, labels, pointer, key encoder
            torch.testing.assert_close(got["state"][key], value, rtol=1e-10, atol=1e-12, msg=key)
        for key, value in model.state_dict().items():  # the gradients of the gathered queries, after DDP's average
            torch.testing.assert_close(got["model"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert int(objective.queue_filled) == 10 and int(objective.queue_ptr) == 16 % 10
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # identical on every process


# ------------------------------------------------------------------------------------------------------------
# The command line: a digits run (4 views; paco takes views 1 and 2) stopped by SIGTERM and resumed.


def test_paco_trains_from_the_cli_and_resumes_to_the_same_weights(tmp_path):
    common = [*TINY, "loss.objective=paco", "loss.paco.queue_size=64", "optim.epochs=2",
              "train.max_steps_per_epoch=2", "train.deterministic=true", "train.amp=none"]  # fmt: skip
    straight, want, run = straight_and_resumed(tmp_path, common, stop_at=3)
    assert "loss   paco (alpha 0.01, beta 1.0, gamma 1.0, tau 0.1; query view 1, key view 2 through a momentum " in (
        straight.stdout
    )
    assert "queue_fill 0.2500 | positives" in straight.stdout  # epoch 1: 0 then 32 of 64 slots -> mean 1/4
    assert any(k.startswith("key_encoder.") for k in want["objective"])
    assert int(want["objective"]["steps"]) == 4 and int(want["objective"]["queue_filled"]) == 64
    rows = (run / "metrics.csv").read_text().splitlines()
    assert "queue_fill" in rows[0] and "positives" in rows[0]
    # the reported accuracy is the saved model's own
    results = json.loads((run / "results.json").read_text())
    assert_reported(results["test"], evaluated_again(run / "checkpoint_last.pt"))
