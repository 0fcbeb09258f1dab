"""Our batched device augmentation against kornia.augmentation, op by op and view by view, on the CPU.

Both sides get the same (B, 3, 32, 32) float batches of real CIFAR-10 images in [0, 1] and draw fresh random
parameters on every call (the cost of drawing them is included). Every row ends with the views' normalisation
on both sides (ours is part of :class:`BatchViewAugment`; kornia gets ``K.Normalize``), so single-op rows are
that op plus one cheap affine pass. Calls alternate between the two sides, in alternating order, and the table
reports medians, because the machine's cores are shared with other work.

kornia is not a project dependency: ``pip install kornia`` first. It differs from ours in what it computes, not
only in speed: its AutoAugment draws one sub-policy per batch (ours and torchvision draw one per image), its
RandomErasing keeps the square inside the image (Cutout lets it cross the border), and its ops follow neither
torchvision's numerics nor our torchvision-equivalence tests.

    python benchmarks/kornia_augment.py                 # 128 images, 1 thread, 30 repeats
    python benchmarks/kornia_augment.py --threads 2 --repeats 50
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltcl.config import ViewsConfig
from ltcl.data.augment import RECIPES, BatchViewAugment, ViewRecipe, blur_kernel_size, normalization_stats
from ltcl.data.augment.recipes import BLUR_SIGMA, COLOR_JITTER

DEFAULT_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpeg.npz"
PLAIN = ViewRecipe(crop="resize", flip=False)  # no step at all: the rows below add one step each


def load_batch(npz_path: Path, count: int) -> torch.Tensor:
    """(count, 3, 32, 32) float32 in [0, 1]: training images spread evenly over the file (so over all classes)."""
    data = np.load(npz_path)
    offsets, blob = data["offsets_train"], data["jpeg_train"]
    picks = np.linspace(0, len(offsets) - 2, count).astype(int)
    decoded = [np.asarray(Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
               for i in picks]  # fmt: skip
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def ours(view: ViewRecipe, cfg: ViewsConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our batched pipeline for any recipe (a preset's, or one step of it), 32 px, its own generator."""
    augment = BatchViewAugment("cifar_autoaugment_cutout", 32, cfg)  # sets the 16 px Cutout and its fill
    augment.recipe = view  # BatchViewAugment reads every step from its recipe
    generator = torch.Generator().manual_seed(0)
    return lambda x: augment(x, generator)


class PerImageAutoAugment(torch.nn.Module):
    """kornia's CIFAR-10 AutoAugment with one sub-policy per image, as ours and torchvision draw them.

    kornia applies one sub-policy to a whole batch; this splits the batch by a per-image draw instead.
    """

    def __init__(self) -> None:
        super().__init__()
        from kornia.augmentation.auto import AutoAugment

        self.subpolicies = list(AutoAugment("cifar10").children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W)."""
        choice = torch.randint(len(self.subpolicies), (len(x),))
        out = x.clone()
        for index in choice.unique().tolist():
            chosen = choice == index
            out[chosen] = self.subpolicies[index](x[chosen])
        return out


def rows(cfg: ViewsConfig) -> list[tuple[str, Callable, Callable]]:
    """(name, ours, kornia) per measured op or view; kornia's modules mirror our recipes' numbers."""
    import kornia.augmentation as K
    from kornia.augmentation.auto import AutoAugment

    mean, std = (torch.tensor(v) for v in normalization_stats(cfg))
    simclr, cifar = RECIPES["simclr"], RECIPES["cifar_autoaugment_cutout"]
    kernel = blur_kernel_size(32)
    side = cifar.cutout / 32  # Cutout 16 px of 32: a quarter of the area, square

    def kornia(*modules):
        sequence = K.AugmentationSequential(*modules, K.Normalize(mean, std))
        return lambda x: sequence(x)

    def kornia_per_image(*modules):  # AutoAugment per image is not a kornia module: run the steps in turn
        normalize = K.Normalize(mean, std)

        def run(x):
            for module in modules:
                x = module(x)
            return normalize(x)

        return run

    def step(**fields):  # our pipeline with one step of a recipe (no other step)
        return ours(dataclasses.replace(PLAIN, **fields), cfg)

    def erasing():  # Cutout's square as RandomErasing: a quarter of the area, ratio 1
        return K.RandomErasing(scale=(side**2, side**2), ratio=(1.0, 1.0), p=1.0)

    per_batch, per_image = "kornia: one sub-policy per batch", "kornia: one sub-policy per image"
    return [
        ("pad-crop 4 + flip", step(crop="pad", pad=4, flip=True),
         kornia(K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip())),
        ("RandomResizedCrop 0.2-1", step(crop="random_resized", crop_scale=(0.2, 1.0)),
         kornia(K.RandomResizedCrop((32, 32), scale=(0.2, 1.0)))),
        ("ColorJitter p 0.8", step(jitter=0.8), kornia(K.ColorJitter(*COLOR_JITTER, p=0.8))),
        ("RandomGrayscale p 0.2", step(grayscale=0.2), kornia(K.RandomGrayscale(p=0.2))),
        ("GaussianBlur 3 px p 0.2", step(blur=0.2), kornia(K.RandomGaussianBlur(kernel, BLUR_SIGMA, p=0.2))),
        ("GaussianBlur 3 px p 1", step(blur=1.0), kornia(K.RandomGaussianBlur(kernel, BLUR_SIGMA, p=1.0))),
        ("Cutout 16 / RandomErasing", step(cutout=cifar.cutout), kornia(erasing())),
        (f"AutoAugment CIFAR-10 ({per_batch})", step(policy="autoaugment"), kornia(AutoAugment("cifar10"))),
        (f"AutoAugment CIFAR-10 ({per_image})", step(policy="autoaugment"), kornia_per_image(PerImageAutoAugment())),
        (f"view cifar_autoaugment_cutout ({per_batch})", ours(cifar, cfg),
         kornia(K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(), AutoAugment("cifar10"), erasing())),
        (f"view cifar_autoaugment_cutout ({per_image})", ours(cifar, cfg),
         kornia_per_image(K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(), PerImageAutoAugment(),
                          erasing())),
        ("view simclr", ours(simclr, cfg),
         kornia(K.RandomResizedCrop((32, 32), scale=simclr.crop_scale), K.RandomHorizontalFlip(),
                K.ColorJitter(*COLOR_JITTER, p=simclr.jitter), K.RandomGrayscale(p=simclr.grayscale),
                K.RandomGaussianBlur(kernel, BLUR_SIGMA, p=simclr.blur))),
    ]  # fmt: skip


def milliseconds(function: Callable, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    function(batch)
    return 1000.0 * (time.perf_counter() - start)


def kornia_subpolicies_per_call(batch: torch.Tensor) -> int:
    """How many AutoAugment sub-policies one kornia call applies to a batch (ours: one per image)."""
    from kornia.augmentation.auto import AutoAugment

    return len(AutoAugment("cifar10").forward_parameters(batch.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="images per batch")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per side and row; the median counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="the shared cifar10_jpeg.npz")
    args = parser.parse_args()

    import kornia

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = load_batch(args.npz, args.batch)
    table = rows(ViewsConfig())
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in table}
    for _, mine, theirs in table:  # warm-up: lazy initialisation, caches, allocator
        for _ in range(3):
            mine(batch), theirs(batch)
    for repeat in range(args.repeats):
        for name, mine, theirs in table:
            pair = (mine, theirs) if repeat % 2 == 0 else (theirs, mine)
            first, second = (milliseconds(f, batch) for f in pair)
            times[name][0].append(first if repeat % 2 == 0 else second)
            times[name][1].append(second if repeat % 2 == 0 else first)

    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {torch.get_num_threads()} thread(s), batch "
          f"({args.batch}, 3, 32, 32) float32 CPU, median of {args.repeats} interleaved calls\n")  # fmt: skip
    print("| op / view | ours (ms/batch) | kornia (ms/batch) | kornia / ours | within 1.3x |")
    print("| --- | ---: | ---: | ---: | :---: |")
    for name, (mine, theirs) in times.items():
        a, b = statistics.median(mine), statistics.median(theirs)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} | {'yes' if b <= 1.3 * a else 'no'} |")
    print(f"\nkornia AutoAugment: {kornia_subpolicies_per_call(batch)} sub-policy per call for the whole batch.")


if __name__ == "__main__":
    main()
