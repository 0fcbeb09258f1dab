"""The ``kcl`` method: its two stages through the engine's step (queue, key encoder, frozen encoder, classifier
reset), two gloo processes against one, the config checks and the header, and a CLI run resumed bit-exactly."""

import copy
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ltcl.config import ConfigError, LossConfig, load_config
from ltcl.data.views import MultiViewBatch
from ltcl.engine.loop import MultiViewForward, step_record
from ltcl.methods import ObjectiveSetup, resolve_config
from ltcl.methods.kcl import KCL, KCLSection
from ltcl.models import LinearClassifier, LongTailNetwork, ProjectionHead
from tests.engine.test_training import (
    DIGITS,
    REPO,
    TINY,
    assert_reported,
    evaluated_again,
    straight_and_resumed,
)

COUNTS = (50, 20, 8, 3)
WORLD, PER_RANK = 2, 4


def tiny_network(batch_norm=False):
    torch.manual_seed(3)
    layers = [nn.Flatten(), nn.Linear(12, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh()]
    network = LongTailNetwork(nn.Sequential(*layers), 8, len(COUNTS), ProjectionHead(8, 0, 5), LinearClassifier(8, 4))
    return network.double()


def make_objective(network, gather=False, epochs=2, classifier_epochs=1):
    section = KCLSection(positives=2, queue_size=12, key_momentum=0.9, classifier_epochs=classifier_epochs)
    setup = ObjectiveSetup(
        class_counts=COUNTS,
        loss=LossConfig(objective="kcl", temperature=0.2),
        section=section,
        projection_dim=5,
        feature_dim=8,
        epochs=epochs,
        num_views=2,
        gather_distributed=gather,
    )
    objective = KCL(setup).double()
    objective.bind(network)
    return objective


def global_batches(steps):
    g = torch.Generator().manual_seed(11)
    out = []
    for _ in range(steps):
        x = torch.randn(2, WORLD * PER_RANK, 3, 2, 2, generator=g, dtype=torch.float64)  # (views, images, ...)
        y = torch.randint(0, len(COUNTS), (WORLD * PER_RANK,), generator=g)
        out.append((x, y))
    return out


def train(network, objective, forward, epochs, rows, optimizer):
    """The engine's step (step_record, objective, backward, SGD, after_step) over ``epochs``: a list of batch lists."""
    records = []
    for epoch, batches in enumerate(epochs):
        objective.set_epoch(epoch)
        forward.train()
        objective.train()
        for x, y in batches:
            n = y[rows].numel()
            batch = MultiViewBatch([x[:, rows].flatten(0, 1)], [[0, 1]], y[rows], torch.ones(2, n, dtype=torch.bool))
            step = step_record(forward, network, objective, batch)
            out = objective(step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            objective.after_step(step)
            records.append(
                {
                    "loss": out.loss.item(),
                    "parts": {k: float(v) for k, v in out.parts.items()},
                    "model": {k: v.detach().clone() for k, v in network.state_dict().items()},
                    "objective": {k: v.detach().clone() for k, v in objective.state_dict().items()},
                }
            )
    return records


def sgd(network):
    return torch.optim.SGD(network.parameters(), lr=0.5, momentum=0.9, weight_decay=0.05)


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        network = tiny_network()
        objective = make_objective(network, gather=True)
        forward = nn.parallel.DistributedDataParallel(MultiViewForward(network))
        batches = global_batches(5)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        records = train(network, objective, forward, [batches[:3], batches[3:]], rows, sgd(network))
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
        del forward
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_through_both_stages(tmp_path):
    """Under DDP every parameter gets a gradient in both stages (no error), the queues of the two processes are the
    same, and loss, weights and queue equal one process on the global batch, step by step."""
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    network = tiny_network()
    objective = make_objective(network)
    batches = global_batches(5)
    single = train(network, objective, MultiViewForward(network), [batches[:3], batches[3:]], slice(None), sgd(network))
    for step, want in enumerate(single):
        for got in (r[step] for r in ranks):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9)
            for part in ("model", "objective"):
                for key, value in want[part].items():
                    torch.testing.assert_close(got[part][key], value, rtol=1e-9, atol=1e-12, msg=f"{step} {key}")
    assert [r["parts"]["stage"] for r in single] == [1, 1, 1, 2, 2]
    assert single[2]["objective"]["loss.queue_labels"].ge(0).sum() == 12  # 3 steps x 8 keys in 12 slots: full
    end_of_stage_1 = single[2]["model"]
    for record in single[3:]:  # stage 2: only the classifier moves, despite weight decay and momentum
        for key, value in record["model"].items():
            assert torch.equal(value, end_of_stage_1[key]) != moves_in_stage_2(key), key


def moves_in_stage_2(key: str) -> bool:
    """Stage 2 trains the classifier's parameters; its evaluation bias is a buffer that only a re-fit sets."""
    return key.startswith("classifier.") and key != "classifier.eval_bias"


def test_the_stages_freeze_what_they_must():
    network = tiny_network(batch_norm=True)
    objective = make_objective(network, epochs=3, classifier_epochs=1)
    forward = MultiViewForward(network)
    optimizer = sgd(network)
    batches = global_batches(6)
    assert objective.sampler_for_epoch(1) is None and objective.sampler_for_epoch(2) == "class_balanced"

    key_before = [p.detach().clone() for p in objective.key_encoder.parameters()]
    stage_1 = train(network, objective, forward, [batches[:1]], slice(None), optimizer)
    # MoCo's momentum update after the step: key = m * key + (1 - m) * query, with m = 0.9
    query = [p for module in (network.backbone, network.projection) for p in module.parameters()]
    for new, old, q in zip(objective.key_encoder.parameters(), key_before, query, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * q, rtol=1e-14, atol=1e-15)
    stage_1 += train(network, objective, forward, [batches[1:4]], slice(None), optimizer)
    bn = network.backbone[2]
    assert int(bn.num_batches_tracked) == 4 and stage_1[-1]["parts"]["queue_fill"] == 1.0
    classifier_before = network.classifier.weight.detach().clone()
    assert stage_1[-1]["parts"]["loss_classifier"] == 0.0 and stage_1[-1]["parts"]["positives"] > 0

    saved = {k: v.clone() for k, v in network.state_dict().items()}
    records = train(network, objective, forward, [[], [], batches[4:]], slice(None), optimizer)
    # Stage 2: the encoder is in eval mode (running statistics, none updated) and its weights are put back.
    for key, value in network.state_dict().items():
        assert torch.equal(value, saved[key]) != moves_in_stage_2(key), key
    assert not network.backbone.training and network.classifier.training
    x = batches[5][0][0]
    with torch.no_grad():
        want = copy.deepcopy(network).eval().backbone(x)
        torch.testing.assert_close(forward([x], False)[0].features, want, rtol=0, atol=0)
    # The classifier restarted from zero and trained; its loss and the stage are the named statistics.
    assert not torch.equal(network.classifier.weight, classifier_before)
    assert [r["parts"]["stage"] for r in records] == [2.0, 2.0] and records[0]["parts"]["loss_kcl"] == 0.0
    assert records[0]["parts"]["loss_classifier"] == pytest.approx(torch.log(torch.tensor(4.0)).item())  # zero start

    # A resume inside stage 2: the classifier is not reset again and the encoder is restored to what was loaded.
    resumed_network = copy.deepcopy(network)
    resumed = make_objective(resumed_network, epochs=3, classifier_epochs=1)
    resumed.load_state_dict(objective.state_dict())
    trained = resumed_network.classifier.weight.detach().clone()
    train(resumed_network, resumed, MultiViewForward(resumed_network), [[], [], batches[5:]], slice(None),
          sgd(resumed_network))  # fmt: skip
    assert not torch.equal(resumed_network.classifier.weight, trained) and bool(resumed.classifier_reset)
    assert torch.equal(resumed_network.backbone[1].weight, saved["backbone.1.weight"])

    objective.set_epoch(0)  # back in stage 1 (tests only): the encoder trains normally again
    network.train()
    assert network.backbone.training and "train" not in network.backbone.__dict__


def test_the_classifier_learning_rate_scale_scales_the_gradient_not_the_value():
    batches = global_batches(1)
    grads, values = [], []
    for scale in (1.0, 7.0):
        network = tiny_network()
        objective = make_objective(network)
        objective.section.classifier_lr_scale = scale
        objective.set_epoch(1)
        x, y = batches[0]
        batch = MultiViewBatch([x.flatten(0, 1)], [[0, 1]], y, torch.ones(2, y.numel(), dtype=torch.bool))
        out = objective(step_record(MultiViewForward(network), network, objective, batch))
        out.loss.backward()
        grads.append(network.classifier.weight.grad.clone())
        values.append((out.loss.item(), out.parts["loss_classifier"].item()))
        assert torch.count_nonzero(network.backbone[1].weight.grad) == 0  # the frozen encoder: exact zeros
    torch.testing.assert_close(grads[1], 7.0 * grads[0], rtol=1e-12, atol=0)
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def test_a_step_never_waits_for_the_device():
    from tests.engine.test_host_syncs import CountSyncs

    network = tiny_network(batch_norm=True)
    objective = make_objective(network, epochs=2, classifier_epochs=1)
    forward, optimizer = MultiViewForward(network), sgd(network)
    for epoch, (x, y) in enumerate(global_batches(2)):
        objective.set_epoch(epoch)  # once per epoch: may read a flag
        batch = MultiViewBatch([x.flatten(0, 1)], [[0, 1]], y, torch.ones(2, y.numel(), dtype=torch.bool))
        with CountSyncs() as mode:  # forward, both stages' losses, backward, SGD, queue and momentum updates
            step = step_record(forward, network, objective, batch)
            out = objective(step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            objective.after_step(step)
        assert mode.calls == [], (epoch, mode.calls)


def test_the_header_names_both_stages():
    objective = make_objective(tiny_network(), epochs=10, classifier_epochs=3)
    assert objective.describe() == (
        "kcl (k 2, queue 12, key momentum 0.9, tau 0.2; stage 1, epochs 1-7: KCL, query view 1, key view 2; "
        "stage 2, epochs 8-10: linear classifier re-trained from zero on frozen features of view 1, "
        "class_balanced sampler)"
    )
    names = ("stage", "loss_kcl", "loss_classifier", "queue_fill", "positives", "feature_norm")
    assert objective.stat_names == names
    objective.section.classifier_lr_scale = 1200.0
    assert objective.describe().endswith("class_balanced sampler, learning rate x1200)")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model": {"classifier": "cosine"}}, "model.classifier"),
        (
            {"views": {"num_views": 1, "presets": ["digits"], "sizes": [32], "contrastive_mode": "uniform"}},
            "views.num_views",
        ),  # fmt: skip
        ({"loss": {"kcl": {"classifier_epochs": 30}}}, "classifier_epochs"),
        ({"optim": {"epochs": 1}}, "optim.epochs"),
        ({"loss": {"kcl": {"classifier_sampler": "balanced"}}}, "classifier_sampler"),
    ],
)
def test_settings_it_cannot_train_with_are_refused(overrides, key):
    from ltcl.config import from_dict, to_dict

    values = to_dict(load_config(DIGITS))
    values["loss"]["objective"] = "kcl"
    for section, entries in overrides.items():
        values[section] = {**values[section], **entries}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config(from_dict(values))


@pytest.mark.parametrize(
    "name", ["cifar10_lt_if100_kcl.yaml", "cifar100_lt_if100_kcl.yaml", "imagenet_lt_x50_kcl.yaml"]
)
def test_the_rival_configs_parse(name):
    cfg = resolve_config(load_config(str(REPO / "configs" / "rivals" / name)))
    assert cfg.loss.objective == "kcl" and cfg.loss.sections["kcl"]["positives"] == 6
    assert cfg.model.projection_hidden == 0  # the authors' linear head (no --mlp)


def test_it_trains_from_the_cli_and_resumes_to_the_same_weights(tmp_path):
    """Stopped by SIGTERM inside stage 1 (queue and key encoder half-way), resumed into stage 2."""
    common = [*TINY, "loss.objective=kcl", "loss.kcl.queue_size=96", "optim.epochs=2", "train.max_steps_per_epoch=3",
              "train.deterministic=true", "train.amp=none"]  # fmt: skip
    straight, want, run = straight_and_resumed(tmp_path, common, stop_at=2)
    assert "stage 1, epoch 1: KCL" in straight.stdout and "stage 2, epoch 2: linear" in straight.stdout
    assert any(k.startswith("key_encoder.") for k in want["objective"]) and bool(want["objective"]["classifier_reset"])
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [float(r.split(",")[header.index("stage")]) for r in rows[1:]] == [1.0, 2.0]
    # the reported accuracy is the saved model's own
    results = json.loads((run / "results.json").read_text())
    assert_reported(results["test"], evaluated_again(run / "checkpoint_last.pt"))
