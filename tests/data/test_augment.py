"""Augmentation presets on real CIFAR-10 images, checked against slow references written here."""

import io
import re
from types import SimpleNamespace
from typing import get_args

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image

from ltcl.config import ViewsConfig
from ltcl.config.schema import Preset
from ltcl.data.augment import (
    DEVICE_PRESETS,
    NORMALIZATION,
    PRESETS,
    RECIPES,
    Cutout,
    RandomGaussianBlur,
    RandomPadCrop,
    ToNormalizedTensor,
    blur_kernel_size,
    build_test_transform,
    build_train_transform,
    normalization_stats,
    resolve_views,
)

BLURRED = {"simclr", "randaugstack"}  # presets whose output is not always a whole number of pixel levels


@pytest.fixture(scope="module")
def images():
    """Eight training images, one from each of eight classes, decoded from the shared JPEG blob."""
    from tests.conftest import shared_file

    data = np.load(shared_file("cifar10_jpeg.npz"))
    offsets, blob = data["offsets_train"], data["jpeg_train"]
    picks = [c * 5000 + 17 for c in range(8)]
    return [Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB") for i in picks]


def _pixels(x: torch.Tensor, normalization: str) -> np.ndarray:
    """Undoes the normalisation: (3, H, W) tensor -> float64 pixel levels 0..255."""
    mean, std = (np.asarray(v, dtype=np.float64).reshape(3, 1, 1) for v in NORMALIZATION[normalization])
    return (x.double().numpy() * std + mean) * 255.0


@pytest.mark.parametrize("normalization", ["cifar", "imagenet"])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_shape_dtype_and_normalisation(preset, normalization, images):
    cfg = ViewsConfig(normalization=normalization)
    lows, highs = [], []
    for size in (32, 24):
        transform = build_train_transform(preset, size, cfg)
        for image in images:
            x = transform(image)
            assert x.shape == (3, size, size) and x.dtype == torch.float32 and x.is_contiguous()
            pixels = _pixels(x, normalization)
            assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
            lows.append(pixels.min())
            highs.append(pixels.max())
            if preset in BLURRED:
                continue
            # PIL operations give whole pixel levels; only blur (float) and Cutout (exact zeros) do not.
            keep = ~(x == 0).all(dim=0).numpy()
            assert np.abs(pixels - np.round(pixels))[:, keep].max() < 2e-3
    # Real images span dark and bright levels; an unnormalised output would squeeze into [0.4, 0.7] * 255.
    assert min(lows) < 40 and max(highs) > 215


def test_none_preset_is_exact_normalisation(images):
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in NORMALIZATION["cifar"])
    transform = build_train_transform("none", 32, ViewsConfig())
    for image in images:
        reference = (np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0 - mean) / std
        np.testing.assert_allclose(transform(image).numpy(), reference, atol=1e-5)


def test_to_normalized_tensor_matches_torchvision_chain(images):
    mean, std = NORMALIZATION["imagenet"]
    chain = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    big = images[0].resize((224, 224))
    for image in (images[1], big, images[2].convert("L")):
        rgb = image.convert("RGB")
        out = ToNormalizedTensor(mean, std)(image)
        assert out.is_contiguous()
        torch.testing.assert_close(out, chain(rgb), atol=1e-5, rtol=0)


def test_same_seed_same_views_different_seed_different_views(images):
    for preset in PRESETS:
        transform = build_train_transform(preset, 32, ViewsConfig())
        torch.manual_seed(123)
        first = [transform(image) for image in images]
        torch.manual_seed(123)
        again = [transform(image) for image in images]
        torch.manual_seed(321)
        other = [transform(image) for image in images]
        assert all(torch.equal(a, b) for a, b in zip(first, again)), preset
        if preset != "none":
            assert not all(torch.equal(a, b) for a, b in zip(first, other)), preset


def _normalised(array: np.ndarray, normalization: str = "cifar") -> np.ndarray:
    """(H, W, 3) pixel levels -> the (3, H, W) normalised float64 reference."""
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in NORMALIZATION[normalization])
    return (np.asarray(array, dtype=np.float64).transpose(2, 0, 1) / 255.0 - mean) / std


def test_test_transform_resize_then_centre_crop(images):
    image = images[3]
    out = build_test_transform(ViewsConfig(test_size=32, test_resize=40))(image).numpy()
    resized = np.asarray(image.resize((40, 40), Image.BILINEAR))[4:36, 4:36]
    np.testing.assert_allclose(out, _normalised(resized), atol=1e-5)

    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    out = build_test_transform(ViewsConfig(test_size=24, test_resize=28, normalization="imagenet"))(wide)
    reference = np.asarray(wide.resize((42, 28), Image.BILINEAR))[2:26, 9:33]  # shorter side 28, then the centre
    np.testing.assert_allclose(out.numpy(), _normalised(reference, "imagenet"), atol=1e-5)


def test_test_transform_at_native_size_does_not_resample(images):
    """test_resize 0 means test_size: a 32 px image at test_size 32 is exactly normalised, with no resampling."""
    transform = build_test_transform(ViewsConfig(test_size=32, test_resize=0))
    resize = transform.transforms[0]
    assert isinstance(resize, v2.Resize) and resize.size == [32]
    for image in images:
        assert resize(image) is image  # torchvision returns the image itself when the size already matches
        assert torch.equal(transform(image), ToNormalizedTensor(*NORMALIZATION["cifar"])(image))


def test_test_transform_judges_a_large_photo_whole(images):
    """A large photo is shrunk to test_size, not cut to its centre test_size pixels (torchvision's convention)."""
    photo = images[5].resize((512, 512), Image.BICUBIC)  # a real image, upscaled to photo size
    out = build_test_transform(ViewsConfig(test_size=32))(photo).numpy()
    whole = _normalised(photo.resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(out, whole, atol=1e-5)
    centre = _normalised(np.asarray(photo)[240:272, 240:272])
    # The output is close to the original 32 px image (up to the two resamplings), far from the centre crop.
    assert np.abs(out - _normalised(np.asarray(images[5]))).mean() < 0.15 < 0.5 < np.abs(out - centre).mean()

    portrait = images[6].resize((40, 50), Image.BICUBIC)  # 40 wide, 50 high: 32 wide, 40 high, then the centre
    out = build_test_transform(ViewsConfig(test_size=32))(portrait).numpy()
    np.testing.assert_allclose(out, _normalised(np.asarray(portrait.resize((32, 40), Image.BILINEAR))[4:36]), atol=1e-5)


def _zero_box(out: torch.Tensor):
    """Bounding box (y0, y1, x0, x1) of the zeroed pixels of a Cutout output of a ones image."""
    zero = (out == 0).all(dim=0)
    ys, xs = torch.nonzero(zero, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert zero[y0:y1, x0:x1].all() and int(zero.sum()) == (y1 - y0) * (x1 - x0), "not one rectangle"
    assert (out[:, ~zero] == 1).all()
    return y0, y1, x0, x1


def test_cutout_zeroes_one_clipped_16px_square():
    cutout = Cutout(16)
    image = torch.ones(3, 32, 32)
    full, touched = 0, {"top": 0, "bottom": 0, "left": 0, "right": 0}
    draws = 1000
    for _ in range(draws):
        y0, y1, x0, x1 = _zero_box(cutout(image))
        for lo, hi, a, b in ((y0, y1, "top", "bottom"), (x0, x1, "left", "right")):
            # Centre c uniform in 0..31 gives rows max(c - 8, 0) .. min(c + 8, 32): 16 rows, or clipped.
            assert (hi - lo == 16) or (lo == 0 and 8 <= hi <= 16) or (hi == 32 and 8 <= 32 - lo <= 16)
            touched[a] += lo == 0
            touched[b] += hi == 32
        full += (y1 - y0 == 16) and (x1 - x0 == 16)
    assert torch.equal(image, torch.ones(3, 32, 32)), "Cutout must not modify its input"
    # An unclipped square needs its centre in 8..24 on both axes: probability (17 / 32) ** 2 = 0.282.
    assert abs(full / draws - (17 / 32) ** 2) < 0.05
    assert all(count > 50 for count in touched.values())


def test_cutout_fill_per_channel_and_black_preset(images):
    out = Cutout(16, fill=[1.0, 2.0, 3.0])(torch.zeros(3, 32, 32))
    assert out[0].max() == 1 and out[1].max() == 2 and out[2].max() == 3
    assert (out[0] == 1).sum() >= 64

    mean, std = NORMALIZATION["cifar"]
    transform = build_train_transform("cifar_autoaugment_cutout", 32, ViewsConfig(cutout_fill="black"))
    black = torch.tensor([-m / s for m, s in zip(mean, std)]).reshape(3, 1)
    for image in images:
        x = transform(image).reshape(3, -1)
        assert torch.isclose(x, black, atol=1e-6).all(dim=0).sum() >= 64  # at least an 8x8 corner square


def test_random_pad_crop_is_a_window_of_the_padded_image(images):
    crop = RandomPadCrop(4)
    array = np.asarray(images[0])
    padded = np.pad(array, ((4, 4), (4, 4), (0, 0)))
    seen = set()
    for _ in range(200):
        out = np.asarray(crop(images[0]))
        assert out.shape == array.shape
        matches = [
            (dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(out, padded[dy : dy + 32, dx : dx + 32])
        ]
        assert matches, "output is not a 32x32 window of the zero-padded image"
        seen.update(matches)
    assert {dy for dy, _ in seen} == set(range(9)) and {dx for _, dx in seen} == set(range(9))


@pytest.mark.parametrize("shape,kernel", [((3, 32, 32), 3), ((3, 40, 56), 5), ((3, 224, 224), 23), ((1, 9, 4), 7)])
def test_gaussian_blur_matches_torchvision(shape, kernel):
    image = torch.rand(shape)
    for sigma in (0.3, 1.0, 2.0):
        out = RandomGaussianBlur(kernel, sigma=(sigma, sigma))(image)
        reference = F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_gaussian_blur_commutes_with_normalisation():
    mean = torch.tensor([0.4, 0.5, 0.6]).reshape(3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    image = torch.rand(3, 32, 32)
    blur = RandomGaussianBlur(3, sigma=(1.5, 1.5))
    torch.testing.assert_close(blur((image - mean) / std), (blur(image) - mean) / std, atol=1e-5, rtol=0)


def test_blur_kernel_size_is_odd_tenth_of_side():
    assert blur_kernel_size(32) == 3 and blur_kernel_size(224) == 23
    for size in range(8, 400):
        k = blur_kernel_size(size)
        assert k % 2 == 1 and abs(k - max(3.0, 0.1 * size)) <= 1.5


def _describe(step):
    """The recipe-defining parameters of one pipeline step."""
    name = type(step).__name__
    keys = {
        "RandomPadCrop": ["padding"],
        "RandomHorizontalFlip": ["p"],
        "AutoAugment": ["policy"],
        "Resize": ["size"],
        "RandomResizedCrop": ["size", "scale"],
        "RandomGrayscale": ["p"],
        "ColorJitter": ["brightness", "contrast", "saturation", "hue"],
        "RandAugment": ["num_ops", "magnitude", "num_magnitude_bins"],
        "RandomAffine": ["degrees"],
        "RandomGaussianBlur": ["kernel_size", "sigma"],
        "Cutout": ["length"],
        "ToNormalizedTensor": ["mean", "std"],
    }
    if name == "RandomApply":
        return (name, step.p, *[_describe(t) for t in step.transforms])
    return (
        name,
        *[tuple(getattr(step, k)) if isinstance(getattr(step, k), list) else getattr(step, k) for k in keys[name]],
    )


def test_presets_follow_the_recipes():
    """The recipes of docs/conventions.md ("Recipes"), step by step (order included)."""
    cifar = ("ToNormalizedTensor", NORMALIZATION["cifar"][0], NORMALIZATION["cifar"][1])
    flip = ("RandomHorizontalFlip", 0.5)
    jitter = ("RandomApply", 0.8, ("ColorJitter", (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)))
    gray = ("RandomGrayscale", 0.2)
    randaug = ("RandAugment", 2, 10, 11)
    expected = {
        "cifar_autoaugment_cutout": [
            ("RandomPadCrop", 4),
            flip,
            ("AutoAugment", v2.AutoAugmentPolicy.CIFAR10),
            ("Resize", (32, 32)),
            cifar,
            ("Cutout", 16),
        ],
        "simclr": [
            ("RandomResizedCrop", (32, 32), (0.2, 1.0)),
            flip,
            jitter,
            gray,
            cifar,
            ("RandomApply", 0.2, ("RandomGaussianBlur", 3, (0.1, 2.0))),
        ],
        "randaugment": [("RandomResizedCrop", (32, 32), (0.08, 1.0)), flip, randaug, cifar],
        "randaugstack": [
            ("RandomResizedCrop", (32, 32), (0.08, 1.0)),
            flip,
            randaug,
            jitter,
            gray,
            cifar,
            ("RandomApply", 0.5, ("RandomGaussianBlur", 3, (0.1, 2.0))),
        ],
        "digits": [("RandomPadCrop", 4), ("RandomAffine", (-10.0, 10.0)), ("Resize", (32, 32)), cifar],
        "digits_simclr": [("RandomResizedCrop", (32, 32), (0.5, 1.0)), ("RandomAffine", (-10.0, 10.0)), cifar],
        "none": [("Resize", (32, 32)), cifar],
    }
    assert set(expected) == set(PRESETS)
    for preset, steps in expected.items():
        assert [_describe(s) for s in build_train_transform(preset, 32, ViewsConfig()).transforms] == steps, preset


def test_randaugment_uses_config_values():
    cfg = ViewsConfig(randaugment_n=3, randaugment_m=7, randaugment_bins=11)
    for preset in ("randaugment", "randaugstack"):
        ops = [t for t in build_train_transform(preset, 32, cfg).transforms if isinstance(t, v2.RandAugment)]
        assert len(ops) == 1
        assert (ops[0].num_ops, ops[0].magnitude, ops[0].num_magnitude_bins) == (3, 7, 11)


@pytest.mark.parametrize(
    "preset,size,overrides,match",
    [
        ("autoaug", 32, {}, "known presets: cifar_autoaugment_cutout"),
        ("simclr", 0, {}, "positive number of pixels"),
        ("none", 32, {"normalization": "coco"}, "views.normalization"),
        ("randaugment", 32, {"randaugment_m": 11}, "views.randaugment_m"),
        ("randaugment", 32, {"randaugment_n": -1}, "views.randaugment_n"),
        ("cifar_autoaugment_cutout", 32, {"cutout_fill": "red"}, "views.cutout_fill"),
    ],
)
def test_train_transform_errors_name_the_bad_value(preset, size, overrides, match):
    with pytest.raises(ValueError, match=match):
        build_train_transform(preset, size, ViewsConfig(**overrides))


def test_other_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="views.test_size must be a positive"):
        build_test_transform(ViewsConfig(test_size=-1))
    with pytest.raises(ValueError, match="views.test_resize"):
        build_test_transform(ViewsConfig(test_resize=-1))
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(4)
    with pytest.raises(ValueError, match="positive"):
        Cutout(0)


# ----------------------------------------------------------------------------------------------------------
# The recipe table and model-defined inputs


def test_presets_are_the_schema_literal_and_each_has_one_recipe():
    assert PRESETS == get_args(Preset) == tuple(RECIPES)
    assert DEVICE_PRESETS == tuple(p for p in PRESETS if RECIPES[p].policy != "randaugment")
    assert "randaugment" not in DEVICE_PRESETS and "simclr" in DEVICE_PRESETS


VIT = SimpleNamespace(size=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125))


def test_resolve_views_fills_sizes_and_statistics_from_the_model(images):
    cfg = ViewsConfig(sizes=[0, 24], test_size=0, normalization="model")
    resolved = resolve_views(cfg, VIT)
    assert resolved.sizes == [40, 24] and resolved.test_size == 40
    assert normalization_stats(resolved) == (VIT.mean, VIT.std)
    assert cfg.sizes == [0, 24] and cfg.test_size == 0  # the run's config is left as it was
    assert resolved.presets == cfg.presets and resolved.presets is not cfg.presets

    big = images[0].resize((40, 40), Image.BICUBIC)
    expected = ToNormalizedTensor(VIT.mean, VIT.std)(big)
    assert torch.equal(build_train_transform("none", resolved.sizes[0], resolved)(big), expected)
    assert torch.equal(build_test_transform(resolved)(big), expected)


def test_resolve_views_keeps_what_the_config_states():
    cfg = ViewsConfig(sizes=[0], test_size=32, normalization="imagenet")
    resolved = resolve_views(cfg, VIT)
    assert resolved.sizes == [40] and resolved.test_size == 32
    assert normalization_stats(resolved) == NORMALIZATION["imagenet"]  # a dataset normalisation stays
    plain = ViewsConfig()
    assert resolve_views(plain, VIT) is plain and resolve_views(plain, None) is plain  # nothing to fill in
    model = resolve_views(ViewsConfig(normalization="model"), VIT)
    assert resolve_views(model, None) is model  # resolving twice changes nothing


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"sizes": [32, 0]}, "A views.sizes entry is 0"),
        ({"test_size": 0}, "views.test_size is 0"),
        ({"normalization": "model"}, "views.normalization is 'model'"),
    ],
)
def test_model_defined_inputs_without_a_spec_are_one_sentence_errors(overrides, match):
    with pytest.raises(ValueError, match=match) as error:
        resolve_views(ViewsConfig(**overrides), None)
    message = str(error.value)
    assert message.endswith(".") and not re.search(r"\. [A-Z]", message), message  # one sentence


def test_unresolved_model_inputs_fail_where_they_are_used():
    with pytest.raises(ValueError, match="views.normalization 'model'.*resolve_views"):
        normalization_stats(ViewsConfig(normalization="model"))
    with pytest.raises(ValueError, match="views.test_size is 0"):
        build_test_transform(ViewsConfig(test_size=0))
    with pytest.raises(ValueError, match="model's input std"):
        resolve_views(ViewsConfig(normalization="model"), SimpleNamespace(size=32, mean=(0, 0, 0), std=(1, 0, 1)))
    with pytest.raises(ValueError, match="model's input size"):
        resolve_views(ViewsConfig(sizes=[0]), SimpleNamespace(size=0, mean=(0, 0, 0), std=(1, 1, 1)))
