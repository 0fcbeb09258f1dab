"""GML (Suh and Seo, ICML 2023): the loss against a float64 loop over the paper's equations (values and gradients),
the class-partitioned queue against a list simulation, the key encoders, two gloo processes against one, and a
digits run that resumes to the same weights."""

import math
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ltcl.config import ConfigError, LossConfig, from_dict, load_config
from ltcl.engine.inference import trained_network
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from ltcl.engine.trainer import train
from ltcl.losses.gml import GMLLoss
from ltcl.losses.gml_queue import ClassQueue, queue_segments
from ltcl.methods import ObjectiveSetup, StepRecord, resolve_config
from ltcl.methods.gml import GML, GMLSection
from ltcl.models.heads import CosineClassifier, ProjectionHead
from ltcl.models.network import LongTailNetwork, build_network
from tests.engine.test_training import DIGITS, REPO, TINY, assert_same_checkpoints, sets

COUNTS = [40, 15, 6, 3, 1]

# ------------------------------------------------------------------------------------------------------------
# The reference: the paper's equations, one Python loop per sum, float64.


def log_mean_exp(values):
    return torch.log(sum(torch.exp(v) for v in values) / len(values))


def cross_entropy(scores, target):
    return -(scores[target] - torch.log(sum(torch.exp(s) for s in scores.values())))


def gml_reference(q, y, qids, k, kl, kids, logits, log_t, counts, *, gamma, beta, alpha, teacher=None, t=4.0):
    """``gamma L_sup + beta (L_con + L_conT) + alpha L_kd``: the logit-adjusted cross-entropy; the Gaussian-mixture
    likelihood of each class (log-mean-exp of the query's similarities to that class's keys) adjusted by the log
    prior, with the temperature held fixed; the same with the similarities held fixed and the anchor's own key left
    out (anchors whose class then has no key are left out); the distillation ``t^2 KL(p_t || p_s)``."""
    log_prior = [math.log(n / sum(counts)) for n in counts]
    temperature = log_t.exp()
    classes = range(len(counts))
    sup = con = con_t = kd = q.sum() * 0.0
    valid_t = 0
    for i in range(q.shape[0]):
        target = int(y[i])
        sup = sup + cross_entropy({c: logits[i, c] + log_prior[c] for c in classes}, target)
        scores = {}
        for c in classes:
            sims = [torch.dot(q[i], k[j]) / temperature.detach() for j in range(k.shape[0]) if int(kl[j]) == c]
            scores[c] = log_mean_exp(sims) + log_prior[c]
        con = con + cross_entropy(scores, target)
        scores = {}
        for c in classes:
            sims = [
                torch.dot(q[i], k[j]).detach() / temperature
                for j in range(k.shape[0])
                if int(kl[j]) == c and int(kids[j]) != int(qids[i])
            ]
            if sims:
                scores[c] = log_mean_exp(sims) + log_prior[c]
        if target in scores:
            con_t = con_t + cross_entropy(scores, target)
            valid_t += 1
        if teacher is not None:
            p_t = torch.softmax(teacher[i] / t, 0)
            log_p_s = torch.log_softmax(logits[i] / t, 0)
            kd = kd + t**2 * sum(p_t[c] * (torch.log(p_t[c]) - log_p_s[c]) for c in classes)
    a = q.shape[0]
    parts = {"sup": sup / a, "con": con / a, "con_t": con_t / max(valid_t, 1), "kd": kd / a}
    total = gamma * parts["sup"] + beta * (parts["con"] + parts["con_t"]) + alpha * parts["kd"]
    return total, parts


# Anchor labels; queue labels (by segment); which anchors' own keys are in the queue (their ids: 100 + i).
PATTERNS = {
    "mixed": ([0, 0, 1, 2, 3, 0], [0, 0, 0, 0, 1, 1, 2, 2, 3, 4], {0: 1, 2: 4, 4: 8}),
    # class 4 alone in the batch, and its only key is the anchor's own: left out of L_conT
    "alone_own_key_only": ([4, 0, 1, 3], [0, 0, 0, 1, 1, 2, 3, 3, 4], {0: 8, 1: 0, 3: 6}),
    "one_class": ([2, 2, 2], [0, 1, 2, 2, 2, 3, 4], {0: 2, 1: 3}),
}
SETTINGS = [  # (gamma, beta, alpha, T): the CIFAR defaults, distillation on, no contrastive term
    (1.0, 1.0, 0.0, 0.1),
    (0.5, 2.0, 1.5, 0.07),
    (1.0, 0.0, 0.0, 0.2),
]


def pattern_inputs(name, seed=0, d=5):
    labels, key_labels, own = PATTERNS[name]
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(len(labels), d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    k = F.normalize(torch.randn(len(key_labels), d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    logits = (10 * torch.randn(len(labels), len(COUNTS), generator=g, dtype=torch.float64)).requires_grad_()
    teacher = 10 * torch.randn(len(labels), len(COUNTS), generator=g, dtype=torch.float64)
    qids = torch.tensor([100 + i for i in range(len(labels))])
    kids = torch.full((len(key_labels),), -1, dtype=torch.int64)
    for anchor, slot in own.items():
        kids[slot] = 100 + anchor
    return q, torch.tensor(labels), qids, k, torch.tensor(key_labels), kids, logits, teacher


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_loss_and_gradients_match_the_equations(pattern, setting):
    gamma, beta, alpha, tau = setting
    q, y, qids, k, kl, kids, logits, teacher = pattern_inputs(pattern)
    module = GMLLoss(COUNTS, temperature=tau, gamma=gamma, beta=beta, alpha=alpha).double()
    log_t = torch.tensor(math.log(tau), dtype=torch.float64, requires_grad=True)
    module.log_temperature.data.copy_(log_t)  # the module's parameter is float32 until .double()
    got, parts = module(q, y, qids, k, kl, kids, logits, teacher)
    want, want_parts = gml_reference(q, y, qids, k, kl, kids, logits, log_t, COUNTS, gamma=gamma, beta=beta,
                                     alpha=alpha, teacher=teacher)  # fmt: skip
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for name in ("sup", "con", "con_t") + (("kd",) if alpha > 0 else ()):
        assert parts[f"loss_{name}"].item() == pytest.approx(want_parts[name].item(), rel=1e-10), name
    leaves = (q, k, logits)
    targets = (*leaves, module.log_temperature) if beta > 0 else leaves
    got_grads = torch.autograd.grad(got, targets, allow_unused=True)
    got_grads = [torch.zeros_like(t) if g is None else g for g, t in zip(got_grads, targets)]
    want_grads = torch.autograd.grad(want, (*leaves, log_t) if beta > 0 else leaves, allow_unused=True)
    for g_got, g_want in zip(got_grads, want_grads):
        g_want = torch.zeros_like(g_got) if g_want is None else g_want
        torch.testing.assert_close(g_got, g_want.reshape(g_got.shape), rtol=1e-9, atol=1e-11)
    assert (got_grads[0].abs().sum() > 0) == (beta > 0)  # queries learn only through the contrastive term
    assert not module.log_temperature.requires_grad or beta > 0


def test_an_anchor_whose_class_keeps_no_key_is_left_out_of_the_temperature_term():
    q, y, qids, k, kl, kids, logits, teacher = pattern_inputs("alone_own_key_only")
    loss, parts = GMLLoss(COUNTS).double()(q, y, qids, k, kl, kids, logits)
    assert torch.isfinite(loss)
    # the same term over the other anchors only
    _, rest = GMLLoss(COUNTS).double()(q[1:], y[1:], qids[1:], k, kl, kids, logits[1:])
    assert parts["loss_con_t"].item() == pytest.approx(rest["loss_con_t"].item(), rel=1e-12)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, logits))


def test_far_below_keys_do_not_underflow():
    # A temperature of 0.005: the code's shared row maximum would give exp(-400) = 0 for class 1, log 0 = -inf.
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    module = GMLLoss([1, 1], temperature=0.005).double()
    module.log_temperature.data.fill_(math.log(0.005))
    loss, parts = module(q, torch.tensor([1]), torch.tensor([5]), k, torch.tensor([0, 1]), torch.tensor([-1, -1]),
                         torch.zeros(1, 2, dtype=torch.float64))  # fmt: skip
    assert parts["loss_con"].item() == pytest.approx(2 / 0.005, rel=1e-12)


def test_the_log_prior_adjusts_both_estimates():
    # Equal logits and keys equally far: each term is then -log(pi_y), smaller for the head class.
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    module = GMLLoss([30, 10]).double()
    for target, prior in ((0, 0.75), (1, 0.25)):
        _, parts = module(q, torch.tensor([target]), torch.tensor([9]), k, torch.tensor([0, 1]),
                          torch.tensor([-1, -1]), torch.zeros(1, 2, dtype=torch.float64))  # fmt: skip
        for name in ("loss_sup", "loss_con", "loss_con_t"):
            assert parts[name].item() == pytest.approx(-math.log(prior), rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# The queue


def segments_reference(counts, size, base_k):
    total, ends, cumulative = sum(counts), [], 0.0
    for c, n in enumerate(counts):
        cumulative += n / total
        ends.append(min(math.ceil((c + 1) * base_k + (size - len(counts) * base_k) * cumulative), size))
    ends[-1] = size
    starts = [0, *ends[:-1]]
    return starts, [e - s for s, e in zip(starts, ends)]


@pytest.mark.parametrize("counts,size,base_k", [(COUNTS, 40, 2), ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83,
                                                                     50], 4096, 2), ([7, 7, 7], 21, 7)])  # fmt: skip
def test_segments_follow_the_prior_with_a_floor(counts, size, base_k):
    starts, sizes = queue_segments(counts, size, base_k)
    assert (starts.tolist(), sizes.tolist()) == segments_reference(counts, size, base_k)
    assert int(sizes.sum()) == size and int(sizes.min()) >= base_k
    with pytest.raises(ValueError, match="needs at least"):
        queue_segments(counts, len(counts) * base_k - 1, base_k)


def test_enqueue_writes_per_class_ring_buffers():
    queue = ClassQueue(COUNTS, 24, 2, dim=3)
    starts, sizes = (t.tolist() for t in (queue.starts, queue.sizes))
    assert queue.labels.tolist() == [c for c, n in enumerate(sizes) for _ in range(n)]
    assert queue.fill().item() == 0.0 and torch.allclose(queue.features.norm(dim=1), torch.ones(24))
    slots = {j: queue.features[j].clone() for j in range(24)}
    ids = {j: -1 for j in range(24)}
    pointers = [0] * len(COUNTS)
    g = torch.Generator().manual_seed(3)
    seen = 0
    for step in range(5):
        labels = torch.tensor([0] * 12 + [4, 4, 4, 1, 3]) if step == 2 else torch.randint(0, 5, (9,), generator=g)
        features = torch.randn(labels.numel(), 3, generator=g)
        got_ids = queue.enqueue(features, labels)
        assert got_ids.tolist() == list(range(seen, seen + labels.numel()))
        for c in range(len(COUNTS)):
            rows = [r for r in range(labels.numel()) if int(labels[r]) == c][: sizes[c]]  # no room: dropped
            for n, r in enumerate(rows):
                slot = starts[c] + (pointers[c] + n) % sizes[c]
                slots[slot], ids[slot] = features[r], seen + r
            pointers[c] = (pointers[c] + len(rows)) % sizes[c]
        seen += labels.numel()
        torch.testing.assert_close(queue.features, torch.stack([slots[j] for j in range(24)]))
        assert queue.ids.tolist() == [ids[j] for j in range(24)]
        assert queue.pointers.tolist() == pointers
        assert queue.fill().item() == pytest.approx(sum(v >= 0 for v in ids.values()) / 24)


# ------------------------------------------------------------------------------------------------------------
# The method: key encoders, a step, two processes against one

B, SIDE, FEATURES, DIM = 4, 4, 8, 4


def tiny_network(seed=7, num_classes=5):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, FEATURES), nn.Tanh())
    return LongTailNetwork(backbone, FEATURES, num_classes, ProjectionHead(FEATURES, 6, DIM),
                           CosineClassifier(FEATURES, num_classes, scale=30.0)).double()  # fmt: skip


def make_objective(gather=False, **section):
    values = {"queue_size": 20, "base_k": 2, "momentum": 0.9, **section}
    setup = ObjectiveSetup(
        class_counts=tuple(COUNTS),
        loss=LossConfig(objective="gml", temperature=0.1),
        section=GMLSection(**values),
        projection_dim=DIM,
        feature_dim=FEATURES,
        hidden_dim=6,
        num_views=3,
        gather_distributed=gather,
    )
    return GML(setup)


def step_record(model, images, labels):
    """Three views of ``labels.numel()`` images, one size group, view-major."""
    out = model(images)
    return StepRecord(logits=out.logits, labels=labels.repeat(3), projections=out.projections,
                      contrastive_mask=torch.ones(3 * labels.numel(), dtype=torch.bool), num_views=3,
                      batch_size=labels.numel(), model=model, images=[images], group_views=[[0, 1, 2]])  # fmt: skip


def global_steps(steps=3, world=2):
    g = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(steps):
        labels = torch.randint(0, len(COUNTS), (world * B,), generator=g)
        labels[:3] = 0  # more rows of class 0 than its segment... of 2 + prior share: some rows find no room
        images = torch.randn(3, world * B, 3, SIDE, SIDE, generator=g, dtype=torch.float64)
        batches.append((images, labels))
    return batches


def run(model, objective, batches, rank=0, world=1):
    """SGD steps on this rank's images; grads averaged over ranks as DDP does. Per step: loss, parts, grads,
    queue state; at the end the parameters."""
    params = [p for p in model.parameters()] + [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    records = []
    for images, labels in batches:
        per_rank = labels.numel() // world
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        step = step_record(model, images[:, rows].flatten(0, 1), labels[rows])
        out = objective(step)
        optimizer.zero_grad()
        out.loss.backward()
        if world > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= world
        records.append({
            "loss": out.loss.item(),
            "parts": {k: v.item() for k, v in out.parts.items()},
            "grads": [p.grad.clone() for p in params],
            "queue": {k: v.clone() for k, v in objective.queue.state_dict().items()},
        })  # fmt: skip
        optimizer.step()
        objective.after_step(step)
    return records, {k: v.clone() for k, v in objective.state_dict().items()}


def test_the_momentum_encoder_is_a_frozen_copy_that_follows_the_network():
    model, objective = tiny_network(), make_objective(alpha=1.0).double()
    objective.attach(model)
    assert all(torch.equal(a, b) for a, b in zip(objective.key_network.parameters(), model.parameters()))
    assert not any(p.requires_grad for p in objective.key_network.parameters())
    assert [p for p in objective.parameters() if p.requires_grad] == [objective.loss.log_temperature]
    before = [p.clone() for p in objective.key_network.parameters()]
    records, state = run(model, objective, global_steps(steps=1, world=1))
    for k, old, q in zip(objective.key_network.parameters(), before, model.parameters()):
        torch.testing.assert_close(k, 0.9 * old + 0.1 * q, rtol=1e-12, atol=1e-14)
    assert {"loss_sup", "loss_con", "loss_con_t", "loss_kd", "temperature", "queue_fill"} == set(records[0]["parts"])
    assert records[0]["parts"]["queue_fill"] == pytest.approx(B / 20)  # 4 rows, each with room
    assert abs(records[0]["parts"]["loss_kd"]) < 1e-12  # the first step's copy is the network: nothing to distil
    assert any(k.startswith("key_network.") for k in state) and any(k.startswith("queue.") for k in state)
    assert "momentum encoder 0.9" in objective.describe() and "alpha 1.0" in objective.describe()


def test_a_teacher_is_frozen_and_the_key_head_trains():
    model, objective = tiny_network(), make_objective(alpha=1.0).double()
    teacher = tiny_network(seed=3)
    objective.attach(model, teacher.train())
    assert objective.teacher is teacher and not teacher.training
    assert objective.key_network is None
    trainable = [p for p in objective.parameters() if p.requires_grad]
    assert len(trainable) == 1 + len(list(objective.key_head.parameters()))
    objective.train()
    assert not teacher.training
    step = step_record(model, *((lambda i, y: (i[:, :B].flatten(0, 1), y[:B]))(*global_steps(1)[0])))
    out = objective(step)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.key_head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("_teacher") or k.startswith("key_network") for k in objective.state_dict())
    # the distillation target is the teacher's logits of the classification view
    with torch.no_grad():
        want = teacher(step.images[0][:B]).logits
    terms = objective.loss(step.projections[B : 2 * B], step.labels[:B], torch.arange(B), F.normalize(
        objective.key_head(objective.queue.features), dim=1), objective.queue.labels, objective.queue.ids,
        step.logits[:B], want)[1]  # fmt: skip
    assert terms["loss_kd"].item() == pytest.approx(out.parts["loss_kd"].item(), rel=1e-12)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, objective = tiny_network(), make_objective(gather=True, alpha=0.5).double()
        objective.attach(model)
        records, state = run(model, objective, global_steps(world=world), rank, world)
        torch.save({"records": records, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_identical_queues_and_equal_one_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    model, objective = tiny_network(), make_objective(alpha=0.5).double()
    objective.attach(model)
    single, single_state = run(model, objective, global_steps(world=world))
    for step, want in enumerate(single):
        for result in ranks:
            got = result["records"][step]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9)
            for name, value in want["parts"].items():
                assert got["parts"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
            for g_got, g_want in zip(got["grads"], want["grads"]):
                torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-11)
            for key, value in want["queue"].items():  # the global batch was enqueued on every process
                torch.testing.assert_close(got["queue"][key], value, rtol=1e-12, atol=0)
    assert 0 < single[-1]["parts"]["queue_fill"] < 1
    for result in ranks:
        for key, value in single_state.items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-8, atol=1e-11)


# ------------------------------------------------------------------------------------------------------------
# Configs and the command line


def test_the_config_must_give_three_views_and_a_cosine_classifier_or_a_linear_one_to_replace():
    cfg = load_config(DIGITS)
    good = replace(cfg, loss=replace(cfg.loss, objective="gml"),
                   model=replace(cfg.model, classifier="cosine", cosine_scale=30.0))  # fmt: skip
    assert resolve_config(good).loss.sections["gml"]["queue_size"] == 4096
    with pytest.raises(ConfigError, match="views.num_views >= 3"):
        resolve_config(replace(good, views=replace(good.views, num_views=2)))
    with pytest.raises(ConfigError, match="model.classifier=cosine and model.cosine_scale=30; got causal"):
        resolve_config(replace(good, model=replace(good.model, classifier="causal")))
    # the plain linear classifier of a config becomes the authors' cosine one; a cosine one keeps its scale
    adapted = resolve_config(replace(good, model=replace(good.model, classifier="linear", cosine_scale=16.0))).model
    assert (adapted.classifier, adapted.cosine_scale) == ("cosine", 30.0)
    assert resolve_config(replace(good, model=replace(good.model, cosine_scale=20.0))).model.cosine_scale == 20.0


@pytest.mark.parametrize("name", ["cifar10_lt_if100", "cifar100_lt_if100", "imagenet_lt_x50"])
def test_the_rival_configs_parse(name):
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / f"{name}_gml.yaml"))
    assert cfg.loss.objective == "gml" and cfg.model.classifier == "cosine" and cfg.model.cosine_scale == 30.0
    assert cfg.views.num_views == 3 and from_dict(cfg.loss.sections["gml"], GMLSection).base_k >= 2


def test_the_teacher_config_of_the_cifar_student_parses():
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / "cifar100_lt_if100_gml_teacher.yaml"))
    assert (cfg.loss.objective, cfg.model.backbone, cfg.model.classifier, cfg.model.cosine_scale) == (
        "la", "resnet56", "cosine", 30.0)  # fmt: skip


def cli(*args, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", "ltcl.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def test_gml_trains_from_the_cli_and_resumes_to_the_same_weights(tmp_path):
    # Small views keep the three runs short; the key view (12 px) and the classified one (16 px) go through the
    # momentum encoder separately.
    common = [*TINY, "loss.objective=gml", "model.classifier=cosine", "model.cosine_scale=30", "loss.gml.queue_size=64",
              "loss.gml.alpha=1.0", "optim.epochs=2", "train.max_steps_per_epoch=2", "train.deterministic=true",
              "train.amp=none", "data.batch_size=16", "views.sizes=[16,16,12]", "views.test_size=16"]  # fmt: skip
    straight = cli("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'straight'}"))
    stopped = cli("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'stopped'}"),
                  env={TEST_SIGNAL_AT_STEP: "3:TERM"})  # fmt: skip
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err
    assert "loss   gml (gamma 1.0, beta 1.0, alpha 1.0 (kd t 4.0); queue 64 keys, >= 2 per class" in out
    assert "| con_t " in out and "| queue_fill " in out and "| temperature " in out and "| kd " in out
    stopped.communicate(timeout=600)
    assert stopped.returncode == 128 + signal.SIGTERM
    resumed = cli("train", "--resume", str(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert_same_checkpoints(want, got)
    assert want["objective"]["queue.seen"].item() == 4 * 16
    header = (tmp_path / "straight" / "digits_lt" / "metrics.csv").read_text().splitlines()[0]
    assert "loss_sup,loss_con,loss_con_t,loss_kd,temperature,queue_fill" in header

    # The finished run as the frozen teacher of another (the authors' --path_t): loaded, not checkpointed.
    cfg = load_config(DIGITS)
    model = build_network(replace(cfg.model, backbone="resnet8", classifier="cosine", cosine_scale=30.0), 10)
    teacher_path = str(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt")
    setup = ObjectiveSetup(class_counts=tuple(range(10, 20)), loss=LossConfig(objective="gml", temperature=0.1),
                           section=GMLSection(teacher=teacher_path, alpha=1.0, queue_size=64), projection_dim=32,
                           feature_dim=model.feature_dim, hidden_dim=64, num_views=3,
                           load_network=trained_network)  # the engine's loader, as train() gives it  # fmt: skip
    objective = GML(setup)
    objective.bind(model)
    assert objective.teacher is not None and not objective.teacher.training
    assert any(k.startswith("key_head.") for k in objective.state_dict())
    images = [torch.randn(3 * 4, 3, 16, 16)]
    step = StepRecord(*(lambda o: (o.logits, torch.arange(4).repeat(3), o.projections))(model(images[0])),
                      contrastive_mask=torch.ones(12, dtype=torch.bool), num_views=3, batch_size=4, model=model,
                      images=images, group_views=[[0, 1, 2]])  # fmt: skip
    out = objective(step)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.parts["loss_kd"] > 0
    assert f"teacher {teacher_path}" in objective.describe()
    # and through the engine, which hands the method its checkpoint reader
    one_step = ["optim.epochs=1", "train.max_steps_per_epoch=1", f"train.output_dir={tmp_path / 's'}"]
    student = train(load_config(DIGITS, [*common, *one_step, f"loss.gml.teacher={teacher_path}"]))
    saved = torch.load(student.run_dir / "checkpoint_last.pt", weights_only=True)["objective"]
    assert any(k.startswith("key_head.") for k in saved) and not any(k.startswith("key_network.") for k in saved)
