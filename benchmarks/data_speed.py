"""Data-pipeline speed: images per second that one DataLoader worker (one CPU core) can augment.

Times ``transform(image)`` on real CIFAR-10 images from the shared npz, one process with one torch thread
(as inside a DataLoader worker). For the 224 px column the 32 px images are first upscaled to 256x256 with
PIL (outside the timing), so the cost matches ImageNet-size inputs. JPEG decoding is not timed.

    python benchmarks/data_speed.py --images 1000
    python benchmarks/data_speed.py --presets simclr randaugstack --images 500
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from ltcl.config import ViewsConfig
from ltcl.data.augment import PRESETS, build_train_transform
from ltcl.data.views import build_multiview_transform

DEFAULT_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpeg.npz"

MULTIVIEW_RECIPES = {
    "CIFAR: 2x cifar_autoaugment_cutout + 2x simclr, 32 px": (
        ViewsConfig(presets=["cifar_autoaugment_cutout", "cifar_autoaugment_cutout", "simclr"], sizes=[32]),
        32,
    ),
    "ImageNet: randaugment + 3x randaugstack, 224 px": (
        ViewsConfig(presets=["randaugment", "randaugstack"], sizes=[224], normalization="imagenet"),
        224,
    ),
}


def load_images(npz_path: Path, count: int) -> list[Image.Image]:
    """Decodes ``count`` training images spread evenly over the file (so over all classes)."""
    if not npz_path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {npz_path} does not exist; pass --npz PATH.")
    data = np.load(npz_path)
    offsets, blob = data["offsets_train"], data["jpeg_train"]
    picks = np.linspace(0, len(offsets) - 2, count).astype(int)
    return [Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB") for i in picks]


def images_per_second(transform, images: list[Image.Image], repeats: int) -> float:
    """Best of ``repeats`` passes over ``images`` (the best pass is the least disturbed by other load)."""
    for image in images[: max(1, len(images) // 10)]:  # warm-up: caches, lazy initialisation
        transform(image)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            transform(image)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--images", type=int, default=1000, help="images timed per measurement")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS, help="presets timed")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement; the best one counts")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="the shared cifar10_jpeg.npz")
    parser.add_argument("--no-multiview", action="store_true", help="skip the 4-view recipes")
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    small = load_images(args.npz, args.images)
    large = [image.resize((256, 256), Image.BICUBIC) for image in small]

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU: {cpu_model()}")
    print(f"{args.images} CIFAR-10 images, 1 process, 1 torch thread, best of {args.repeats} passes\n")
    print("| preset | 32 px (img/s) | 224 px from 256x256 (img/s) |")
    print("| --- | ---: | ---: |")
    for preset in args.presets:
        cfg = ViewsConfig(normalization="cifar")
        rate_small = images_per_second(build_train_transform(preset, 32, cfg), small, args.repeats)
        cfg = ViewsConfig(normalization="imagenet")
        rate_large = images_per_second(build_train_transform(preset, 224, cfg), large, args.repeats)
        print(f"| {preset} | {rate_small:,.0f} | {rate_large:,.0f} |")

    if not args.no_multiview:
        print("\n| 4-view recipe | images/s (all 4 views) |")
        print("| --- | ---: |")
        for name, (cfg, size) in MULTIVIEW_RECIPES.items():
            transform = build_multiview_transform(cfg)
            rate = images_per_second(transform, small if size == 32 else large, args.repeats)
            print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
