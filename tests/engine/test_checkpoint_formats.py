"""Checkpoints written before the method registry (format 2) still evaluate and resume.

The fixtures are real checkpoints of ltcl 0.1.0 (revision 413a74a): ResNet-8 on the digits, stopped by SIGTERM
after step 3 of 4 (epoch 2, batch 1), one of BS + ACL (with ``loss.center_momentum=0.8``, a key that has since
moved to ``loss.acl``) and one of LA + BCL (whose prototype head was a top-level module of the objective).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ltcl.config import from_dict, save_config
from ltcl.data.build import build_data
from ltcl.engine import checkpoint as ckpt
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.recipe import build_train_state, model_views
from ltcl.methods import resolve_config
from tests.engine.test_training import ltcl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def old_checkpoint(name: str) -> dict:
    return torch.load(FIXTURES / f"format2_{name}_resnet8.pt", weights_only=True)


@pytest.mark.parametrize("name", ["bs_acl", "la_bcl"])
def test_a_format_2_checkpoint_restores_every_state_under_its_new_name(name):
    raw = old_checkpoint(name)
    assert raw["format"] == 2 and "names" not in raw["progress"]
    loaded = ckpt.load_checkpoint(FIXTURES / f"format2_{name}_resnet8.pt")
    cfg = resolve_config(from_dict(loaded["config"]))
    if name == "bs_acl":
        assert cfg.loss.sections["acl"]["center_momentum"] == 0.8  # the old flat key, moved
    else:  # BCL of that version contrasted and classified every view: the run continues the same way
        assert cfg.loss.sections["bcl"]["views"] == "all"
    data = build_data(cfg, views=model_views(cfg))
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    state, _, _ = build_train_state(cfg, data, ctx, load_weights=False)
    ckpt.restore(state, loaded)
    objective = state.objective.state_dict()
    if name == "bs_acl":
        torch.testing.assert_close(objective["contrastive.loss.centers"], raw["objective"]["contrastive.centers"])
        assert bool(objective["contrastive.loss.centers_initialized"].all())
    else:
        for key, value in raw["objective"].items():
            new = key.replace("prototype_head.", "contrastive.prototype_head.").replace(
                "classification.", "classification.loss."
            )
            assert torch.equal(objective[new], value), key
    # the epoch's five unnamed running sums, matched to their names
    sums = dict(zip(state.progress.names, state.progress.sums.tolist()))
    old = raw["progress"]["sums"].tolist()
    assert [sums["loss"], sums["loss_cls"], sums["loss_con"], sums["correct"], sums["images"]] == old
    assert (state.epoch, state.batch, state.global_step) == (1, 1, 3)


def test_a_format_2_run_resumes_to_its_end_and_evaluates(tmp_path):
    run = tmp_path / "la_bcl"
    run.mkdir()
    shutil.copy(FIXTURES / "format2_la_bcl_resnet8.pt", run / "checkpoint_last.pt")
    save_config(from_dict(ckpt.load_checkpoint(run / "checkpoint_last.pt")["config"]), run / "config.yaml")
    ltcl("train", "--resume", str(run / "checkpoint_last.pt"))
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] is None or results["best_epoch"] <= 2
    resumed = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert resumed["format"] == ckpt.FORMAT_VERSION and resumed["epoch"] == 2 and resumed["global_step"] == 4
    proc = ltcl("eval", "--checkpoint", str(FIXTURES / "format2_bs_acl_resnet8.pt"), "--json", "--out", str(tmp_path))
    assert json.loads(proc.stdout)["images"] == 500
