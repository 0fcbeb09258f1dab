"""The rivals' objectives train end to end through the command line, and resume exactly (BCL's prototype head,
GPaCo's projection head and queue, and LDAM's re-weighting switch live in the objective's state)."""

import json

import pytest

from tests.engine.test_training import DIGITS, TINY, assert_reported, evaluated_again, ltcl, sets, straight_and_resumed

RIVALS = {
    "gpaco": ["loss.objective=gpaco"],
    "la_bcl": ["loss.objective=la+bcl", "loss.cls_weight=2.0", "loss.alpha=0.6"],
    "ldam_drw": [
        "loss.objective=ldam",
        "model.classifier=cosine",
        "model.cosine_scale=1.0",
        "loss.ldam.drw_start_epoch=1",
    ],
}
# What each stateful rival keeps in its objective's state (and a resume must restore).
KEPT_STATE = {
    "la_bcl": lambda objective: any(k.startswith("contrastive.prototype_head.") for k in objective),
    # re-weighting switched on for the second epoch (0-based epoch 1)
    "ldam_drw": lambda objective: bool(objective["classification.loss.reweighting"]),
    # 6 steps of 32 second views: 192 keys in the queue, the rest still the random start; GPaCo's own head
    "gpaco": lambda objective: (
        int(objective["loss.queue.pushed"]) == 6 * 32 and any(k.startswith("head.") for k in objective)
    ),
}


def test_gpaco_trains_as_the_whole_objective(tmp_path):
    proc = ltcl("train", "-c", DIGITS, *sets(*TINY, *RIVALS["gpaco"], "optim.epochs=1", "train.max_steps_per_epoch=2",
                                             f"train.output_dir={tmp_path}"))  # fmt: skip
    assert " con " not in proc.stdout  # one loss: no separate contrastive part
    # The header names the weights GPaCo reads (not loss.alpha, which it ignores), its head and its queue.
    assert ("loss   gpaco (alpha 0.01, beta 1.0, gamma 1.0, tau 0.1; head 64-64-64-128, queue 1024 (random start); "
            "views 1-2); 4 view(s)") in proc.stdout  # fmt: skip
    assert "| queue_fill 0.0156 | centre_weight " in proc.stdout  # steps see 0 then 32 of 1024 keys: mean 16/1024
    run = tmp_path / "digits_lt"
    # The reported accuracy is the saved model's: evaluated again from the checkpoint, it is the same.
    assert_reported(json.loads((run / "results.json").read_text())["test"], evaluated_again(run / "checkpoint_last.pt"))


@pytest.mark.parametrize("name", ["gpaco", "la_bcl", "ldam_drw"])
def test_a_stateful_rival_trains_and_resumes_to_the_same_weights(tmp_path, name):
    common = [*TINY, *RIVALS[name], "optim.epochs=2", "train.max_steps_per_epoch=3", "train.deterministic=true",
              "train.amp=none"]  # fmt: skip
    straight, want, run = straight_and_resumed(tmp_path, common, stop_at=4)
    assert KEPT_STATE[name](want["objective"])
    if name == "la_bcl":  # BCL's own split of the four digits views, and its statistic in the epoch line and csv
        assert "bcl (tau 0.1, views split: classification on view 1, BCL on views 2-3)" in straight.stdout
        assert "bcl_proto_cos" in straight.stdout
        assert "bcl_proto_cos" in (run / "metrics.csv").read_text().splitlines()[0]
    # The resumed run reports what the uninterrupted one reports, and both are the saved model's own accuracy.
    reported = [json.loads((tmp_path / d / "digits_lt" / "results.json").read_text()) for d in ("straight", "stopped")]
    fresh = evaluated_again(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt")
    assert_reported(reported[0]["test"], fresh)
    assert_reported(reported[1]["test"], fresh)
    assert reported[1]["per_class_test"] == pytest.approx(fresh.per_class, rel=1e-9, abs=1e-9)
