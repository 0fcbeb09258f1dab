"""The README's promises: its Python snippet works as written, and every ``ltcl`` command line of it runs.

The command lines run in order, through bash and the installed ``ltcl`` script, in a scratch directory that holds
``configs/`` and a small photo folder, with tiny schedules appended (one step per epoch, a small backbone) and
CIFAR-10 read from a small file of the shared one's format, so that each line is exercised as written: a README
command that stops working fails here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
TINY = ["optim.epochs=1", "train.max_steps_per_epoch=1", "data.batch_size=16", "optim.warmup_epochs=0",
        "data.num_workers=0", "train.progress=false", "data.eval_batch_size=1000"]  # fmt: skip
SMALL_MODEL = ["model.backbone=resnet8"]
TINY_VIT = ["model.backbone=timm/vit_tiny_patch16_224", "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2}",
            "model.pretrained=false", "views.sizes=[32]", "views.test_size=32"]  # fmt: skip
NOT_LTCL = {"torchrun", "bash"}  # launchers on GPU machines (torchrun, the GPU script): shown, not run here


def test_readme_starts_with_the_two_commands():
    lines = [line for line in README.read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[1] for line in lines[:2]] == ["run", "test"]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_every_python_block_runs_as_printed(tmp_path, monkeypatch):
    """Blocks that start with ``# NAME.py`` are files for the command lines (written by the scratch fixture);
    every other block runs as printed, in a fresh namespace."""
    snippets = [b for b in python_blocks() if not re.match(r"# \w+\.py\n", b)]
    assert snippets, "the README shows how to use the losses in Python"
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        namespace: dict = {}
        exec(compile(snippet, "README.md", "exec"), namespace)
    # the first block: Eq. 10 on made-up data, finite and differentiated by its own loss.backward()
    first = snippets[0]
    namespace = {}
    exec(compile(first, "README.md", "exec"), namespace)
    assert namespace["loss"].dim() == 0 and torch.isfinite(namespace["loss"])
    assert namespace["logits"].grad.abs().sum() > 0 and namespace["acl"].centers_initialized.any()


def readme_command_lines() -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined, comments removed."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def tiny(line: str) -> str:
    """The README line with a tiny schedule appended where it trains."""
    words = line.split()
    if words[1] == "train" and "--resume" in words:
        return re.sub(r"--extend-epochs \d+", "--extend-epochs 2", line)
    if words[1] not in ("train", "sweep") or "--print-commands" in words:
        return line
    extra = TINY + (TINY_VIT if "my_photos.yaml" in line else SMALL_MODEL)
    return line + "".join(f" --set '{s}'" for s in extra)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A working directory with the configs, the YAML of the README's own-data section and a tiny photo folder."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for block in python_blocks():  # the README's files (a plugin), under the name they give themselves
        name = re.match(r"# (\w+\.py)\n", block)
        if name:
            (tmp_path / name.group(1)).write_text(block)
    yaml_block = re.search(r"```yaml\n(# my_photos.yaml\n.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "my_photos.yaml").write_text(yaml_block)
    colours = {"cat": (200, 60, 40), "dog": (40, 60, 200), "owl": (40, 180, 60)}
    for split, counts in (("train", {"cat": 20, "dog": 8, "owl": 3}), ("val", {"cat": 2, "dog": 2, "owl": 2})):
        for name, count in counts.items():
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (48, 40), tuple(c + 3 * i for c in colours[name])).save(folder / f"{i}.png")
    return tmp_path


def test_every_ltcl_line_of_the_readme_runs(scratch, small_cifar10_npz):
    lines = readme_command_lines()
    commands = [line for line in lines if line.split()[0] == "ltcl"]
    assert {line.split()[0] for line in lines} <= {"ltcl", "python", "make", "pip", *NOT_LTCL}, lines
    assert len(commands) >= 15
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    for line in commands:
        # CIFAR-10 lines read a small file of the shared one's format (decoding and testing on all 60,000 images
        # in each of them would be most of this test); the other shared data is read in place.
        line = line.replace("../shared/data/cifar10_jpeg.npz", str(small_cifar10_npz))
        command = tiny(line.replace("../shared/", f"{SHARED}/"))
        proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"README line failed: {line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
