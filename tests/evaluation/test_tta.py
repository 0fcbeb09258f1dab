"""``ltcl eval --tta N`` (LIFT's test-time ensemble): the crops are torchvision's FiveCrop / TenCrop, the averaged
logits equal a loop over explicitly cropped images (float64), N=1 is today's evaluation to the bit, other N are
refused, and the report says how many views its numbers come from."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ltcl.cli import main
from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import build_split
from ltcl.engine.inference import load_trained_model
from ltcl.engine.recipe import model_views
from ltcl.errors import UserError
from ltcl.evaluation.command import SplitOutputs
from ltcl.evaluation.gather import predict_dataset
from ltcl.evaluation.tta import ViewAveraged, check_views, crop_views, expanded_side, tta_views_config

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "format2_bs_acl_resnet8.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    shutil.copy(FIXTURE, run / "checkpoint_best.pt")
    return run / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def trained(checkpoint):
    return load_trained_model(checkpoint, device="cpu")


@pytest.mark.parametrize("side", [35, 36, 248])  # odd and even margins: the centre offset rounds as torchvision's
@pytest.mark.parametrize("n", [5, 10])
def test_the_views_are_torchvision_s_five_and_ten_crops(side, n):
    crop = 32 if side < 100 else 224
    images = torch.randn(2, 3, side, side + 7)  # not square either: the corners must be the image's own
    views = crop_views(images, crop, n)
    for b in range(2):
        want = TF.five_crop(images[b], crop) if n == 5 else TF.ten_crop(images[b], crop)
        assert len(views) == len(want) == n
        for got, expected in zip(views, want):
            assert torch.equal(got[b], expected)


def test_lift_s_sizes_and_the_one_view_config():
    assert expanded_side(224) == 248 and expanded_side(32) == 35
    assert crop_views(torch.ones(1, 3, 8, 8), 4, 1)[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("n", [0, 2, 3, 6, 20, -5])
def test_unsupported_view_counts_are_refused(n):
    with pytest.raises(UserError, match="--tta takes 1 .* 5 .* or 10"):
        check_views(n)


def test_one_view_is_today_s_evaluation_to_the_bit(trained):
    views = model_views(trained.cfg)
    assert tta_views_config(views, 1) is views
    dataset = build_split(trained.cfg.data, "test", build_test_transform(views), class_names=trained.class_names)
    want_logits, want_labels = predict_dataset(trained.model, dataset, trained.device, batch_size=500)
    got_logits, got_labels = SplitOutputs(trained, "test", 1)("test")
    assert torch.equal(got_logits, want_logits) and torch.equal(got_labels, want_labels)


@pytest.mark.parametrize("n", [5, 10])
def test_averaged_logits_equal_a_loop_over_explicitly_cropped_images(checkpoint, trained, n):
    """float64 throughout: the batched crops through the model must equal each image's crops one by one."""
    views = model_views(trained.cfg)
    model = load_trained_model(checkpoint, device="cpu").model.double()
    dataset = build_split(
        trained.cfg.data, "test", build_test_transform(tta_views_config(views, n)), class_names=trained.class_names
    )
    images = torch.stack([dataset[i][0] for i in range(12)]).double()  # (12, 3, 35, 35): the expanded squares
    assert images.shape[-1] == expanded_side(views.test_size) == 35
    with torch.no_grad():
        got = ViewAveraged(model, views.test_size, n).eval()(images).logits
        want = torch.zeros_like(got)
        for i, image in enumerate(images):  # the independent path: torchvision's crops, one image at a time
            crops = TF.five_crop(image, views.test_size) if n == 5 else TF.ten_crop(image, views.test_size)
            want[i] = torch.stack([model(c[None], with_projection=False).logits[0] for c in crops]).mean(0)
        single = model(TF.center_crop(images, views.test_size), with_projection=False).logits
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=0, atol=1e-12)
    assert not torch.allclose(got, single, atol=1e-3)  # the views change the logits: the test can tell


def test_cli_tta_reports_its_views_and_writes_beside_the_single_view_report(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--tta", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tta"]["views"] == 5 and "logits averaged" in report["tta"]["method"]
    assert report["images"] == 500 and 0 <= report["all"] <= 100
    folder = checkpoint.parent / "eval_test_best_tta5"
    assert json.loads((folder / "report.json").read_text())["tta"]["views"] == 5
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--tta", "5"]) == 0
    text = capsys.readouterr().out
    assert "| test (TTA, 5 views) |" in text and "test-time augmentation: 5 views" in text

    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == {"views": 1, "method": "single centre crop"}


def test_cli_refuses_an_unsupported_view_count_in_one_sentence(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--tta", "3"]) == 2
    err = capsys.readouterr().err
    assert "--tta takes 1" in err and "got 3" in err and len(err.strip().splitlines()) == 1
