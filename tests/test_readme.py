"""The README's promises that can be run here: its Python snippet works as written."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    lines = [line for line in README.read_text().splitlines() if line.startswith("make ")]
    assert [line.split()[1] for line in lines[:2]] == ["run", "test"]


def test_the_python_snippet_runs_and_gives_a_finite_differentiable_loss():
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    head = torch.nn.Linear(16, 128)
    namespace = {
        "class_counts": [500, 120, 40, 9],
        "logits": torch.randn(32, 4, requires_grad=True),
        "labels": torch.randint(0, 4, (32,)),
        "projections": F.normalize(head(torch.randn(32, 16)), dim=1),
    }
    exec(snippet, namespace)
    loss = namespace["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0 and namespace["acl"].centers_initialized.any()
