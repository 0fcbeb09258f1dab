"""Batched device augmentation, checked op by op and preset by preset against torchvision per image."""

import dataclasses
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.v2 import AutoAugment as AutoAugmentV2

from ltcl.config import ViewsConfig
from ltcl.data.augment import NORMALIZATION, RECIPES, batched, blur_kernel_size, build_train_transform, resolve_views
from ltcl.data.augment import batch_autoaugment as aa
from ltcl.data.augment import batch_geometry as geo
from ltcl.data.augment import batch_ops as ops

NEAREST, BILINEAR = InterpolationMode.NEAREST, InterpolationMode.BILINEAR
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# AutoAugment's fill: the CIFAR mean colour rounded to the nearest pixel level (torchvision takes whole levels)
FILL = tuple(round(255 * m) / 255 for m in NORMALIZATION["cifar"][0])


@pytest.fixture(scope="module")
def uint8_images() -> torch.Tensor:
    """22 images (B, 3, 32, 32) uint8: two CIFAR-10 training images per class, then two edge cases."""
    from tests.conftest import shared_file

    data = np.load(shared_file("cifar10_jpeg.npz"))
    offsets, blob = data["offsets_train"], data["jpeg_train"]
    picks = [c * 5000 + k * 611 for c in range(10) for k in range(2)] + [7, 19]
    decoded = [np.asarray(Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
               for i in picks]  # fmt: skip
    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
    images[-2] = 77  # constant: equalize and autocontrast must leave it alone
    images[-1] = images[-1] // 40 + 100  # low contrast: few distinct levels
    return images


@pytest.fixture(scope="module")
def images(uint8_images) -> torch.Tensor:
    return uint8_images.float() / 255.0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _per_image(function, batch, *params) -> torch.Tensor:
    """Slow reference: a torchvision op applied image by image with that image's own parameters."""
    return torch.stack([function(batch[i], *(float(p[i]) for p in params)) for i in range(len(batch))])


# ----------------------------------------------------------------------------------------------------------
# Single ops against torchvision, one image at a time


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (ops.adjust_brightness, F.adjust_brightness),
        (ops.adjust_saturation, F.adjust_saturation),
        (ops.adjust_contrast, F.adjust_contrast),
        (ops.adjust_sharpness, F.adjust_sharpness),
    ],
)
def test_colour_blends_match_torchvision(ours, theirs, images):
    factors = torch.linspace(0.1, 1.9, len(images))[torch.randperm(len(images))]
    factors[0] = 1.0
    expected = _per_image(theirs, images, factors)
    torch.testing.assert_close(ours(images, factors), expected, atol=1e-6, rtol=0)
    assert (ours(images, factors) - images).abs().amax() > 0.1  # the factors do change the images


def test_hue_matches_torchvision(images):
    shifts = torch.linspace(-0.5, 0.5, len(images))[torch.randperm(len(images))]
    expected = _per_image(F.adjust_hue, images, shifts)
    torch.testing.assert_close(ops.adjust_hue(images, shifts), expected, atol=2e-6, rtol=0)


def test_level_ops_match_torchvision_on_uint8(images, uint8_images):
    batch = len(images)
    bits = torch.arange(batch) % 8 + 1
    expected = _per_image(lambda im, b: F.posterize(im, int(b)), uint8_images, bits)
    assert torch.equal(ops.posterize(images, bits), expected / 255.0)

    # Integer thresholds (85 is one of the policy's) are where a float comparison could go wrong.
    thresholds = torch.tensor([85.0, 0.0, 255.0, 141.67, 198.33, 170.0] * 4)[:batch]
    expected = _per_image(F.solarize, uint8_images, thresholds).float() / 255.0
    torch.testing.assert_close(ops.solarize(images, thresholds), expected, atol=1e-6, rtol=0)

    expected = _per_image(F.equalize, uint8_images).float() / 255.0
    assert torch.equal(ops.equalize(images), expected)
    assert torch.equal(ops.equalize(images)[-2], images[-2])  # a constant image stays as it is

    # torchvision truncates the stretched uint8 levels; the float op keeps the fraction.
    expected = _per_image(F.autocontrast, uint8_images).float() / 255.0
    difference = ops.autocontrast(images) - expected
    assert difference.min() >= -1e-6 and difference.max() < 1.0 / 255.0 + 1e-6
    torch.testing.assert_close(ops.autocontrast(images), _per_image(F.autocontrast, images), atol=1e-6, rtol=0)

    expected = _per_image(F.invert, uint8_images) / 255.0
    torch.testing.assert_close(ops.invert(images), expected, atol=1e-6, rtol=0)


def test_level_ops_read_the_nearest_level_between_levels():
    """After a blend, pixels lie between levels: solarize and posterize decide on round(255 x)."""
    levels = torch.arange(256, dtype=torch.uint8)
    for offset in (-0.3, 0.3):
        x = ((levels.double() + offset).clamp(0, 255) / 255).reshape(1, 1, 1, 256).expand(256, 3, 1, 256)
        thresholds = torch.arange(256.0)
        inverted = torch.stack([F.solarize(levels, float(t)) != levels for t in thresholds])
        inverted = inverted.reshape(256, 1, 1, 256)
        assert torch.equal(ops.solarize(x, thresholds), torch.where(inverted, 1.0 - x, x))
        bits = torch.arange(256) % 8 + 1
        expected = torch.stack([F.posterize(levels, int(b)) for b in bits]).reshape(256, 1, 1, 256)
        assert torch.equal(ops.posterize(x, bits), (expected.double() / 255).expand(256, 3, 1, 256))


def _torchvision_geometric(image, name, magnitude, fill=FILL):
    """torchvision's AutoAugment geometry through the public functional API (as its _apply_op calls it)."""
    fill = list(fill)
    if name == "ShearX":
        shear = [math.degrees(math.atan(magnitude)), 0.0]
        return F.affine(image, 0.0, [0, 0], 1.0, shear, interpolation=NEAREST, fill=fill, center=[0, 0])
    if name == "ShearY":
        shear = [0.0, math.degrees(math.atan(magnitude))]
        return F.affine(image, 0.0, [0, 0], 1.0, shear, interpolation=NEAREST, fill=fill, center=[0, 0])
    if name == "TranslateX":
        return F.affine(image, 0.0, [int(magnitude), 0], 1.0, [0.0, 0.0], interpolation=NEAREST, fill=fill)
    if name == "TranslateY":
        return F.affine(image, 0.0, [0, int(magnitude)], 1.0, [0.0, 0.0], interpolation=NEAREST, fill=fill)
    return F.rotate(image, magnitude, interpolation=NEAREST, fill=fill)


def _equal_pixel_fraction(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> float:
    return ((a - b).abs().amax(dim=-3) <= atol).float().mean().item()


@pytest.mark.parametrize("name, limit", [("ShearX", 0.3), ("ShearY", 0.3), ("TranslateX", 14.0),
                                         ("TranslateY", 14.0), ("Rotate", 30.0)])  # fmt: skip
def test_geometric_ops_match_torchvision(name, limit, images):
    magnitudes = torch.linspace(-limit, limit, len(images))[torch.randperm(len(images))]
    if name.startswith("Translate"):
        magnitudes = magnitudes.trunc()
    op = torch.full((len(images),), aa.AUTOAUGMENT_OPS.index(name))
    ours = aa.autoaugment_slot(images, op, magnitudes, torch.tensor(FILL))
    expected = torch.stack([_torchvision_geometric(im, name, float(m)) for im, m in zip(images, magnitudes)])
    # Both sample with grid_sample(nearest); only grid points within rounding of a pixel border may differ.
    assert _equal_pixel_fraction(ours, expected) >= 0.97
    assert _equal_pixel_fraction(ours, images) < 0.5  # and the images did move


def test_gaussian_blur_matches_torchvision(images):
    sigmas = torch.linspace(0.1, 2.0, len(images))
    for kernel_size in (3, 5):
        expected = torch.stack(
            [F.gaussian_blur(im, [kernel_size] * 2, [float(s)] * 2) for im, s in zip(images, sigmas)]
        )
        torch.testing.assert_close(ops.gaussian_blur(images, kernel_size, sigmas), expected, atol=1e-6, rtol=0)


def test_resized_crop_matches_torchvision(images):
    batch = len(images)
    top, left = torch.arange(batch) % 9, torch.arange(batch) % 7
    height, width = 32 - top - torch.arange(batch) % 5, 32 - left - torch.arange(batch) % 3
    flip = torch.arange(batch) % 2 == 1
    for size in (32, 48, 20):  # enlarging and shrinking (ours never antialiases)
        ours = geo.resized_crop(images, top, left, height, width, size, flip)
        for i in range(batch):
            box = (int(top[i]), int(left[i]), int(height[i]), int(width[i]))
            expected = F.resized_crop(images[i], *box, [size, size], antialias=False)
            expected = F.horizontal_flip(expected) if flip[i] else expected
            torch.testing.assert_close(ours[i], expected, atol=2e-6, rtol=0)


def test_pad_crop_is_a_window_of_the_zero_padded_image(images):
    batch = len(images)
    top, left = torch.arange(batch) % 9 - 4, torch.arange(batch).flip(0) % 9 - 4
    flip = torch.arange(batch) % 3 == 0
    ours = geo.pad_crop_flip(images, top, left, flip)
    padded = torch.nn.functional.pad(images, [4, 4, 4, 4])
    for i in range(batch):
        window = padded[i, :, 4 + top[i] : 4 + top[i] + 32, 4 + left[i] : 4 + left[i] + 32]
        assert torch.equal(ours[i], window.flip(-1) if flip[i] else window)


def test_cutout_fills_the_clipped_square(images):
    batch = len(images)
    cy, cx = torch.arange(batch) * 5 % 32, torch.arange(batch) * 11 % 32
    cy[:3], cx[:3] = torch.tensor([0, 31, 16]), torch.tensor([0, 31, 16])  # corners and the centre
    fill = torch.tensor([-1.0, -2.0, -3.0])
    ours = geo.cutout(images, cy, cx, 16, fill)
    for i in range(batch):
        expected = images[i].clone()
        y0, x0 = int(cy[i]) - 8, int(cx[i]) - 8
        expected[:, max(y0, 0) : y0 + 16, max(x0, 0) : x0 + 16] = fill.reshape(3, 1, 1)
        assert torch.equal(ours[i], expected)
    covered = (ours == fill.reshape(1, 3, 1, 1)).all(dim=1).sum(dim=(1, 2))
    assert covered[:3].tolist() == [8 * 8, 9 * 9, 16 * 16]  # the square spans centre - 8 .. centre + 7


def test_identity_parameters_leave_images_unchanged(images):
    batch = len(images)
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    for blend in (ops.adjust_brightness, ops.adjust_saturation, ops.adjust_contrast, ops.adjust_sharpness):
        assert torch.equal(blend(images, ones), images)
    assert torch.equal(ops.posterize(images, torch.full((batch,), 8)), images)
    assert torch.equal(ops.solarize(images, torch.full((batch,), 256.0)), images)
    assert torch.equal(ops.gaussian_blur(images, 5, zeros), images)
    torch.testing.assert_close(ops.adjust_hue(images, zeros), images, atol=1e-6, rtol=0)
    no_op = torch.full((batch,), -1)
    assert torch.equal(aa.autoaugment_slot(images, no_op, torch.randn(batch), torch.tensor(FILL)), images)
    assert torch.equal(geo.pad_crop_flip(images, zeros.long(), zeros.long(), zeros.bool()), images)
    full = torch.full((batch,), 32)
    whole = geo.resized_crop(images, zeros.long(), zeros.long(), full, full, 32, zeros.bool())
    torch.testing.assert_close(whole, images, atol=1e-6, rtol=0)
    pairs = torch.zeros(batch, 2)
    matrix = geo.inverse_affine_matrix(zeros, pairs, ones, pairs, pairs)
    assert torch.equal(matrix, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(batch, 2, 3))
    assert torch.equal(geo.affine_sample(images, matrix, 32, "nearest", torch.tensor(FILL)), images)


# ----------------------------------------------------------------------------------------------------------
# AutoAugment: the policy table and a whole slot of mixed ops


def test_both_pipelines_fill_exposed_areas_with_the_rounded_mean_colour():
    augment = batched.BatchViewAugment("cifar_autoaugment_cutout", 32, ViewsConfig())
    assert augment.fill == pytest.approx(FILL, abs=1e-12)
    (policy,) = [s for s in build_train_transform("cifar_autoaugment_cutout", 32, ViewsConfig()).transforms
                 if type(s).__name__ == "AutoAugment"]  # fmt: skip
    assert tuple(policy.fill) == tuple(round(255 * f) for f in FILL)  # torchvision's AutoAugment, in whole levels


def test_autoaugment_tables_follow_torchvision():
    op, probability, magnitude, signed, names = aa.autoaugment_tables(32, 32)
    policies = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    space_v2 = AutoAugmentV2._AUGMENTATION_SPACE  # a second, independent statement of the magnitudes
    assert op.shape == (len(policies), 2) == magnitude.shape
    for p, policy in enumerate(policies):
        for s, (name, prob, index) in enumerate(policy):
            assert aa.AUTOAUGMENT_OPS[int(op[p, s])] == name and float(probability[p, s]) == prob
            assert name in names[s]
            if index is None:
                assert float(magnitude[p, s]) == 0.0 and not signed[p, s]
                continue
            expected = float(space_v2[name][0](10, 32, 32)[index]) * (255.0 if name == "Solarize" else 1.0)
            if name in ("TranslateX", "TranslateY", "Posterize"):
                expected = float(int(expected))
            assert float(magnitude[p, s]) == pytest.approx(expected, abs=1e-4)
            assert bool(signed[p, s]) == space_v2[name][1]


def _reference_op(image, name, magnitude, fill=FILL):
    """One AutoAugment op on one float image with torchvision (level ops on the rounded uint8 levels)."""
    levels = (image * 255).round().to(torch.uint8)
    if name in GEOMETRIC:
        return _torchvision_geometric(image, name, magnitude, fill)
    blends = {"Brightness": F.adjust_brightness, "Color": F.adjust_saturation,
              "Contrast": F.adjust_contrast, "Sharpness": F.adjust_sharpness}  # fmt: skip
    if name in blends:
        return blends[name](image, 1.0 + magnitude)
    if name == "Posterize":
        return F.posterize(levels, int(magnitude)).float() / 255.0
    if name == "Solarize":
        return torch.where(F.solarize(levels, magnitude) != levels, 1.0 - image, image)
    if name == "Equalize":
        return F.equalize(levels).float() / 255.0
    if name == "AutoContrast":
        return F.autocontrast(image)
    return F.invert(image)


def test_autoaugment_slot_matches_torchvision_per_image(images):
    """Every sample gets a different op: each op must reach exactly its own samples."""
    batch = len(images)
    op = torch.arange(batch) % (len(aa.AUTOAUGMENT_OPS) + 1) - 1  # -1 (nothing) and every op
    # One magnitude per op code 0..13 (shears from the policy's bins, away from nearest-neighbour ties).
    per_op = [0.7 / 3, -0.8 / 3, -9.0, 6.0, -25.0, 0.6, -0.5, 0.7, -0.8, 5.0, 128.0, 0, 0, 0]
    magnitude = torch.tensor([0.0] + per_op).repeat(2)[:batch]
    ours = aa.autoaugment_slot(images, op, magnitude, torch.tensor(FILL))
    for i in range(batch):
        if op[i] < 0:
            assert torch.equal(ours[i], images[i])
            continue
        name = aa.AUTOAUGMENT_OPS[int(op[i])]
        expected = _reference_op(images[i], name, float(magnitude[i]))
        assert _equal_pixel_fraction(ours[i], expected) >= (0.97 if name in GEOMETRIC else 1.0), name


# ----------------------------------------------------------------------------------------------------------
# Whole presets against per-image references built from the same parameters


def _normalise(x, normalization="cifar"):
    mean, std = NORMALIZATION[normalization]
    return F.normalize(x, list(mean), list(std))


@pytest.mark.parametrize("size, fill", [(32, "mean"), (24, "black")])
def test_cifar_preset_matches_per_image_reference(size, fill, images):
    cfg = ViewsConfig(cutout_fill=fill)
    augment = batched.BatchViewAugment("cifar_autoaugment_cutout", size, cfg)
    batch = images.repeat(4, 1, 1, 1)  # 104 samples: most sub-policies occur
    params = augment.sample_params(batch, _generator(3))
    ours = augment.apply(batch, params)
    mean, std = NORMALIZATION["cifar"]
    cut_value = [0.0] * 3 if fill == "mean" else [-m / s for m, s in zip(mean, std)]
    length = round(16 * size / 32)
    equal = []
    for i in range(len(batch)):
        top, left = int(params["top"][i]), int(params["left"][i])
        x = torch.nn.functional.pad(batch[i], [4] * 4)[:, 4 + top : 36 + top, 4 + left : 36 + left]
        x = F.horizontal_flip(x) if params["flip"][i] else x
        for slot in range(2):
            code = int(params["op"][i, slot])
            if code >= 0:
                x = _reference_op(x, aa.AUTOAUGMENT_OPS[code], float(params["magnitude"][i, slot]))
        x = _normalise(F.resize(x, [size, size], antialias=True))
        y0, x0 = int(params["cut_y"][i]) - length // 2, int(params["cut_x"][i]) - length // 2
        x[:, max(y0, 0) : y0 + length, max(x0, 0) : x0 + length] = torch.tensor(cut_value).reshape(3, 1, 1)
        equal.append(_equal_pixel_fraction(ours[i], x, atol=1e-5))
    equal = torch.tensor(equal)
    assert equal.mean() >= 0.99 and equal.min() >= 0.9, equal
    assert len(set(params["policy"].tolist())) >= 20


def test_simclr_preset_matches_per_image_reference(images):
    augment = batched.BatchViewAugment("simclr", 32, ViewsConfig(normalization="imagenet"))
    batch = images.repeat(2, 1, 1, 1)
    params = augment.sample_params(batch, _generator(5))
    ours = augment.apply(batch, params)
    for i in range(len(batch)):
        box = [int(params[k][i]) for k in ("top", "left", "height", "width")]
        x = F.resized_crop(batch[i], *box, [32, 32], antialias=False)
        x = F.horizontal_flip(x) if params["flip"][i] else x
        x = F.adjust_brightness(x, float(params["brightness"][i]))
        x = F.adjust_contrast(x, float(params["contrast"][i]))
        x = F.adjust_saturation(x, float(params["saturation"][i]))
        x = F.adjust_hue(x, float(params["hue"][i]))
        x = F.rgb_to_grayscale(x, num_output_channels=3) if params["gray"][i] else x
        x = _normalise(x, "imagenet")
        sigma = float(params["sigma"][i])
        x = F.gaussian_blur(x, [blur_kernel_size(32)] * 2, [sigma] * 2) if sigma > 0 else x
        torch.testing.assert_close(ours[i], x, atol=2e-5, rtol=0)


@pytest.mark.parametrize("preset", ["digits", "digits_simclr"])
def test_digits_presets_match_per_image_reference(preset):
    from ltcl.data.datasets import digits_arrays

    pixels = torch.from_numpy(digits_arrays()[0][:24]).permute(0, 3, 1, 2).float() / 255.0
    size = 32 if preset == "digits" else 28
    augment = batched.BatchViewAugment(preset, size, ViewsConfig())
    params = augment.sample_params(pixels, _generator(7))
    ours = augment.apply(pixels, params)
    assert "flip" not in params  # digits are not mirror-symmetric
    for i in range(len(pixels)):
        if preset == "digits":
            top, left = int(params["top"][i]), int(params["left"][i])
            x = torch.nn.functional.pad(pixels[i], [4] * 4)[:, 4 + top : 36 + top, 4 + left : 36 + left]
        else:
            box = [int(params[k][i]) for k in ("top", "left", "height", "width")]
            x = F.resized_crop(pixels[i], *box, [size, size], antialias=False)
        angle, scale = float(params["angle"][i]), float(params["scale"][i])
        # fill=None: zeros outside, read with the bilinear weights (with a fill colour torchvision weighs
        # the edge pixels twice, which our zero padding does not copy).
        x = F.affine(x, angle, [0, 0], scale, [0.0, 0.0], interpolation=BILINEAR, fill=None)
        torch.testing.assert_close(ours[i], _normalise(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("normalization", ["cifar", "imagenet"])
@pytest.mark.parametrize("preset", batched.DEVICE_PRESETS)
def test_preset_shape_dtype_and_range(preset, normalization, images):
    cfg = ViewsConfig(normalization=normalization)
    mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in NORMALIZATION[normalization])
    for size in (32, 24):
        out = batched.BatchViewAugment(preset, size, cfg)(images, _generator(0))
        assert out.shape == (len(images), 3, size, size) and out.dtype == torch.float32
        pixels = out * std + mean
        assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
        assert pixels.min() < 0.15 and pixels.max() > 0.85  # normalised once, not twice or never
    out64 = batched.BatchViewAugment(preset, 32, cfg)(images.double(), _generator(0))
    assert out64.dtype == torch.float64
    if preset == "none":
        assert torch.equal(out, batched.normalize_batch(geo.resize(images, 24), cfg))
        torch.testing.assert_close(batched.normalize_batch(images, cfg), (images - mean) / std)


@pytest.mark.parametrize("preset", batched.DEVICE_PRESETS)
def test_same_seed_same_views_other_seed_other_views(preset, images):
    augment = batched.BatchViewAugment(preset, 32, ViewsConfig())
    first = augment(images, _generator(11))
    assert torch.equal(first, augment(images, _generator(11)))
    if preset != "none":
        assert not torch.equal(first, augment(images, _generator(12)))
        # The same image twice in one batch gets two different augmentations.
        twin = augment(images[:1].expand(8, -1, -1, -1), _generator(11))
        assert (twin[1:] - twin[0]).abs().flatten(1).amax(1).min() > 0


# ----------------------------------------------------------------------------------------------------------
# Parameter statistics over a large batch


def _rate(mask: torch.Tensor) -> float:
    return mask.float().mean().item()


def test_cifar_parameter_statistics():
    batch = 20000
    shape_only = torch.zeros(1, 3, 32, 32).expand(batch, -1, -1, -1)
    augment = batched.BatchViewAugment("cifar_autoaugment_cutout", 32, ViewsConfig())
    params = augment.sample_params(shape_only, _generator(1))
    assert abs(_rate(params["flip"]) - 0.5) < 0.02
    assert set(params["top"].tolist()) == set(range(-4, 5)) == set(params["left"].tolist())
    assert set(params["cut_y"].tolist()) == set(range(32)) == set(params["cut_x"].tolist())
    policies = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    counts = torch.bincount(params["policy"], minlength=len(policies))
    assert len(counts) == len(policies) and counts.min() > 0.8 * batch / len(policies)
    _, _, magnitude, signed, _ = aa.autoaugment_tables(32, 32)
    for p, policy in enumerate(policies):
        chosen = params["policy"] == p
        for s, (name, prob, _) in enumerate(policy):
            applied = params["op"][chosen, s] >= 0
            assert abs(_rate(applied) - prob) < 0.08, (p, s)
            assert (params["op"][chosen, s][applied] == aa.AUTOAUGMENT_OPS.index(name)).all()
            values = params["magnitude"][chosen, s][applied]
            torch.testing.assert_close(values.abs(), torch.full_like(values, float(magnitude[p, s])))
            if signed[p, s] and magnitude[p, s] != 0 and applied.sum() > 200:
                assert abs(_rate(values < 0) - 0.5) < 0.1


def test_simclr_and_digits_parameter_statistics():
    batch = 20000
    shape_only = torch.zeros(1, 3, 32, 32).expand(batch, -1, -1, -1)
    params = batched.BatchViewAugment("simclr", 32, ViewsConfig()).sample_params(shape_only, _generator(2))
    assert abs(_rate(params["flip"]) - 0.5) < 0.02
    jittered = params["brightness"] != 1
    assert abs(_rate(jittered) - 0.8) < 0.02
    for key in ("contrast", "saturation"):
        assert torch.equal(params[key] != 1, jittered)
        assert params[key].min() >= 0.6 and params[key].max() <= 1.4
    assert params["hue"].abs().max() <= 0.1 and torch.equal(params["hue"] != 0, jittered)
    assert abs(_rate(params["gray"]) - 0.2) < 0.02
    blurred = params["sigma"] > 0
    assert abs(_rate(blurred) - 0.2) < 0.02
    assert params["sigma"][blurred].min() >= 0.1 and params["sigma"].max() <= 2.0
    area = (params["height"] * params["width"]).float() / 1024
    aspect = params["width"].float() / params["height"]
    assert area.min() > 0.15 and area.max() <= 1.0 and 0.5 < area.mean() < 0.7  # uniform 0.2..1 -> ~0.6
    assert aspect.min() > 0.6 and aspect.max() < 1.6  # 3/4..4/3 up to the rounding of small sides
    assert (params["top"] >= 0).all() and (params["top"] + params["height"] <= 32).all()
    assert (params["left"] >= 0).all() and (params["left"] + params["width"] <= 32).all()

    params = batched.BatchViewAugment("digits", 32, ViewsConfig()).sample_params(shape_only, _generator(3))
    assert params["angle"].abs().max() <= 10 and params["angle"].abs().max() > 9.9
    assert params["scale"].min() >= 0.9 and params["scale"].max() <= 1.1


@pytest.mark.parametrize("height, width", [(4, 64), (64, 4)])  # too wide, too tall for ratios 3/4 .. 4/3
def test_random_resized_crop_falls_back_to_torchvisions_centre_crop(height, width):
    """No try fits a box of scale >= 0.9 and ratio 3/4 .. 4/3 into a 4-pixel side: every sample gets torchvision's
    fallback, which ``RandomResizedCrop.get_params`` itself computes here (deterministic: no draw is used)."""
    from torchvision.transforms import RandomResizedCrop

    want = RandomResizedCrop.get_params(torch.zeros(3, height, width), [0.9, 1.0], [3 / 4, 4 / 3])
    draws = batched.Draws(_generator(0), 50, torch.device("cpu"), torch.float32)
    boxes = batched.random_resized_crop_boxes(draws, height, width, (0.9, 1.0))
    assert [set(b.tolist()) for b in boxes] == [{v} for v in want]  # (top, left, height, width)


# ----------------------------------------------------------------------------------------------------------
# Building views and error paths


def test_build_batch_views_expands_presets_and_sizes():
    cfg = ViewsConfig(num_views=4, presets=["cifar_autoaugment_cutout", "simclr"], sizes=[32, 24, 16])
    views = batched.build_batch_views(cfg)
    assert [(v.preset, v.size) for v in views] == [
        ("cifar_autoaugment_cutout", 32), ("simclr", 24), ("simclr", 16), ("simclr", 16)
    ]  # fmt: skip
    assert views[0].cutout_length == 16 and views[2].cutout_length == 0  # simclr has no Cutout
    assert batched.BatchViewAugment("cifar_autoaugment_cutout", 16, cfg).cutout_length == 8


def test_fewer_views_than_entries_use_the_first_entries():
    cfg = ViewsConfig(num_views=2, presets=["simclr", "none", "digits", "digits_simclr", "none"], sizes=[24, 32, 16])
    assert [(v.preset, v.size) for v in batched.build_batch_views(cfg)] == [("simclr", 24), ("none", 32)]


def _expected_keys(view) -> set[str]:
    """The parameter keys a recipe's steps draw, written out from the recipe's fields."""
    keys = {"pad": {"top", "left"}, "random_resized": {"top", "left", "height", "width"}, "resize": set()}[view.crop]
    keys |= {"flip"} if view.flip else set()
    keys |= {"policy", "op", "magnitude"} if view.policy == "autoaugment" else set()
    keys |= {"angle", "scale"} if view.affine else set()
    keys |= {"brightness", "contrast", "saturation", "hue"} if view.jitter else set()
    keys |= {"gray"} if view.grayscale else set()
    keys |= {"sigma"} if view.blur else set()
    return keys | ({"cut_y", "cut_x"} if view.cutout else set())


@pytest.mark.parametrize("preset", batched.DEVICE_PRESETS)
def test_batched_views_draw_what_their_recipe_lists(preset, images):
    params = batched.BatchViewAugment(preset, 32, ViewsConfig()).sample_params(images, _generator(0))
    assert set(params) == _expected_keys(RECIPES[preset])


def test_both_pipelines_read_the_one_recipe_table(monkeypatch, images):
    """Editing a recipe changes the PIL and the batched pipeline alike: no second copy of the numbers exists."""
    simclr = RECIPES["simclr"]
    monkeypatch.setitem(RECIPES, "simclr", dataclasses.replace(simclr, blur=0.0, grayscale=0.0, crop_scale=(1, 1)))
    names = [type(step).__name__ for step in build_train_transform("simclr", 32, ViewsConfig()).transforms]
    assert "RandomGrayscale" not in names and len(names) == 4  # crop, flip, jitter, normalise
    augment = batched.BatchViewAugment("simclr", 32, ViewsConfig())
    params = augment.sample_params(images, _generator(0))
    assert "sigma" not in params and "gray" not in params
    assert (params["height"] * params["width"] > 0.95 * 32 * 32).all()  # scale (1, 1): nearly the whole image
    monkeypatch.setitem(RECIPES, "simclr", dataclasses.replace(simclr, cutout=8))
    assert batched.BatchViewAugment("simclr", 24, ViewsConfig()).cutout_length == 6
    assert type(build_train_transform("simclr", 24, ViewsConfig()).transforms[-1]).__name__ == "Cutout"


def test_model_normalisation_reaches_the_batched_pipeline(images):
    spec = SimpleNamespace(size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = resolve_views(ViewsConfig(normalization="model", sizes=[0], test_size=0), spec)
    (view,) = batched.build_batch_views(dataclasses.replace(cfg, num_views=1))
    assert view.size == 24 and (view.mean, view.std) == (spec.mean, spec.std)
    torch.testing.assert_close(batched.normalize_batch(images, cfg), (images - 0.5) / 0.25)
    with pytest.raises(ValueError, match="views.normalization 'model'"):
        batched.BatchViewAugment("none", 32, ViewsConfig(normalization="model"))


@pytest.mark.parametrize("preset", ["randaugment", "randaugstack", "autoaugment"])
def test_unsupported_preset_names_it_and_the_supported_list(preset):
    with pytest.raises(ValueError, match=rf"'{preset}'.*simclr.*digits_simclr"):
        batched.BatchViewAugment(preset, 32, ViewsConfig())
    with pytest.raises(ValueError, match=preset):
        batched.build_batch_views(ViewsConfig(presets=["simclr", preset]))


def test_bad_configuration_and_inputs_raise_clear_errors(images, uint8_images):
    with pytest.raises(ValueError, match="positive number of pixels"):
        batched.BatchViewAugment("simclr", 0, ViewsConfig())
    with pytest.raises(ValueError, match="positive number of pixels"):
        batched.BatchViewAugment("simclr", True, ViewsConfig())
    with pytest.raises(ValueError, match="views.normalization.*'cifar100'"):
        batched.BatchViewAugment("none", 32, ViewsConfig(normalization="cifar100"))
    with pytest.raises(ValueError, match="views.cutout_fill.*'grey'"):
        batched.BatchViewAugment("cifar_autoaugment_cutout", 32, ViewsConfig(cutout_fill="grey"))
    with pytest.raises(ValueError, match="views.sizes entry is 0"):
        batched.build_batch_views(ViewsConfig(sizes=[32, 0]))
    augment = batched.BatchViewAugment("simclr", 32, ViewsConfig())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 32, 32\)"):
        augment(images[0], _generator(0))
    with pytest.raises(ValueError, match="float images.*torch.uint8"):
        augment(uint8_images, _generator(0))
    with pytest.raises(ValueError, match="torch.Generator.*got int"):
        augment(images, 0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(22, 1, 32, 32\)"):
        batched.normalize_batch(images[:, :1], ViewsConfig())
