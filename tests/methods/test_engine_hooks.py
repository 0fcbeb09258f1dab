"""The hooks the engine offers every method: a second batch stream, running the network itself, and a classifier
whose evaluation-time logits differ from its training logits (eval_bias)."""

import dataclasses

import torch
import torch.nn.functional as F

import ltcl
from ltcl.config import load_config
from ltcl.data.samplers import SAMPLERS
from ltcl.engine.trainer import train
from ltcl.methods import LossOutput, Objective
from ltcl.models import LinearClassifier
from tests.engine.test_training import DIGITS, TINY

CALLS: list[dict] = []


@ltcl.register_objective
class SecondStreamProbe(Objective):
    """Runs the network itself on the main and the second batch (network_views 0) and records what it saw."""

    name = "test_second_stream_probe"
    role = "objective"
    paper = "a test method"
    network_views = 0
    second_sampler = "reversed"

    def forward(self, step):
        assert step.logits is None and step.projections is None and step.num_views == 0
        main, second = step.images[0], step.second.groups[0]
        b = step.batch_size
        logits = step.model(main[:b], with_projection=False).logits
        other = step.model(second[:b], with_projection=False).logits
        loss = F.cross_entropy(logits.float(), step.labels) + F.cross_entropy(other.float(), step.second.labels)
        CALLS.append({"main": step.labels.clone(), "second": step.second.labels.clone()})
        return LossOutput(loss, {}, logits=logits)


def test_a_method_may_ask_for_a_second_batch_and_run_the_network_itself(tmp_path):
    CALLS.clear()
    overrides = [*TINY, "loss.objective=test_second_stream_probe", "optim.epochs=2", "train.max_steps_per_epoch=4",
                 "train.tensorboard=false", f"train.output_dir={tmp_path}"]  # fmt: skip
    result = train(load_config(DIGITS, overrides))
    assert len(CALLS) == 8 and [r["epoch"] for r in result.history] == [1, 2]
    main = torch.cat([c["main"] for c in CALLS])
    second = torch.cat([c["second"] for c in CALLS])
    # the digits' training counts fall from 124 to 12: the reversed stream draws the tail far more often
    counts = torch.tensor([124, 96, 74, 57, 44, 34, 26, 20, 16, 12], dtype=torch.float64)
    tail = lambda y: (y >= 7).double().mean().item()  # noqa: E731
    assert tail(second) > 0.5 > tail(main)
    reversed_share = ((counts.max() / counts) / (counts.max() / counts).sum())[7:].sum().item()
    assert abs(tail(second) - reversed_share) < 0.15
    assert "reversed" in SAMPLERS


@ltcl.register_objective
class OwnCountProbe(Objective):
    """Cross-entropy on view 1, and a count of correct images of its own: a quarter of every batch."""

    name = "test_own_count_probe"
    role = "objective"
    paper = "a test method"

    def forward(self, step):
        b = step.batch_size
        quarter = torch.full((), 0.25 * b, dtype=torch.float64, device=step.logits.device)
        return LossOutput(F.cross_entropy(step.logits[:b].float(), step.labels[:b]), {}, correct=quarter)


def test_a_method_may_count_its_correct_images_itself(tmp_path):
    """LossOutput.correct replaces the argmax count in the train accuracy (BBN's alpha-weighted count)."""
    overrides = [*TINY, "loss.objective=test_own_count_probe", "optim.epochs=1", "train.max_steps_per_epoch=3",
                 "train.tensorboard=false", f"train.output_dir={tmp_path}"]  # fmt: skip
    result = train(load_config(DIGITS, overrides))
    assert [r["train_acc"] for r in result.history] == [25.0]


def test_eval_bias_changes_evaluation_logits_only_and_old_state_dicts_load():
    head = LinearClassifier(4, 3)
    features = torch.randn(5, 4)
    head.eval_bias.copy_(torch.tensor([0.0, 2.0, -1.0]))
    head.train()
    trained = head(features)
    torch.testing.assert_close(trained, F.linear(features, head.weight, head.bias))
    head.eval()
    torch.testing.assert_close(head(features), trained + torch.tensor([0.0, 2.0, -1.0]))
    old = {k: v for k, v in head.state_dict().items() if k != "eval_bias"}  # a checkpoint from before the buffer
    fresh = LinearClassifier(4, 3)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.eval_bias, torch.zeros(3))


def test_a_registered_classifier_is_built_from_the_config():
    from ltcl.models import CLASSIFIERS, build_network

    cfg = load_config(DIGITS, ["model.backbone=resnet8", "model.classifier=cosine", "model.cosine_scale=5"])
    net = build_network(cfg.model, 10)
    assert type(net.classifier).__name__ == "CosineClassifier" and net.classifier.scale == 5
    assert set(CLASSIFIERS) >= {"linear", "cosine"}
    bad = dataclasses.replace(cfg.model, classifier="cosinus")
    try:
        build_network(bad, 10)
    except ValueError as err:
        assert "model.classifier 'cosinus' is not a registered classifier" in str(err) and "cosine" in str(err)
    else:
        raise AssertionError("an unknown classifier was built")
