"""Visual Prompt Tuning (Jia et al., ECCV 2022): N learnable tokens among a vision transformer's tokens.

- shallow (``vpt_shallow:N``): N prompts enter before the first block and pass through every block;
- deep (``vpt_deep:N``): every block gets its own N prompts, which replace the previous block's outputs at
  those positions.

The prompts sit right after the prefix tokens (the class token; timm's register or distillation tokens), as VPT
prepends them after the class token (github KMnP/vpt, ``src/models/vit_prompt/vit.py``, ``incorporate_prompt``,
``forward_deep_prompt``). After the last block they are dropped, so the final norm, the pooling (class token or
mean of the patch tokens) and the projection see the tokens that the backbone itself makes; the prompts act
through attention only. The blocks are untouched: a forward pre-hook on a block puts its prompts into its input,
and a forward hook on the last block takes them out.

Initialisation as VPT's code (and LIFT's ``models/peft_modules.py`` class ``VPT``): uniform on [-v, v],
v = sqrt(6 / (3 * ph * pw + D)), Xavier-uniform for the patch embedding's fan-in and the prompt width. VPT's
default prompt dropout is 0 and its default has no prompt projection: neither is here. LIFT's default N is 10
(``peft_vit.py``): ``vpt_shallow`` and ``vpt_deep`` without ``:N`` take it.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ltcl.models.adapters.vit import AdapterModule, adapter_parameters, factory, unadapted_vit

ATTRIBUTE = "vpt"  # a block's prompts: blocks.<i>.vpt.tokens
LIFT_LENGTH = 10  # LIFT's vpt_len when none is given (peft_vit.py)


class VisualPrompts(AdapterModule):
    """N prompt tokens (N, D) that a block's input takes after its P prefix tokens.

    Args:
        count: N >= 1.
        width: D.
        patch_size: (ph, pw), for the initial range.
        prefix_tokens: P.
        token_dim: sequence dimension of the block input: 1 for (B, L, D), 0 for (L, B, D).
        factory: dtype and device of the tokens.
    """

    def __init__(
        self, count: int, width: int, patch_size: tuple[int, int], prefix_tokens: int, token_dim: int, factory: dict
    ) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(count, width, **factory))
        bound = math.sqrt(6.0 / (3 * math.prod(patch_size) + width))
        nn.init.uniform_(self.tokens, -bound, bound)
        self.prefix_tokens = prefix_tokens
        self.token_dim = token_dim

    def forward(self, x: torch.Tensor, replace: bool) -> torch.Tensor:
        """(B, L, D) -> (B, P + N + L - P, D) inserted, or (B, L, D) with tokens P ... P + N - 1 replaced
        (the (L, B, D) layout likewise along dim 0)."""
        x = x.movedim(self.token_dim, 1)
        prompts = self.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        start = self.prefix_tokens
        rest = x[:, start + len(self.tokens) :] if replace else x[:, start:]
        return torch.cat((x[:, :start], prompts, rest), dim=1).movedim(1, self.token_dim)

    def extra_repr(self) -> str:
        return f"count={len(self.tokens)}, prefix_tokens={self.prefix_tokens}"


def _enter(block: nn.Module, args: tuple, replace: bool) -> tuple:
    return (getattr(block, ATTRIBUTE)(args[0], replace), *args[1:])


def _leave(block: nn.Module, args: tuple, output: torch.Tensor, start: int, count: int, token_dim: int) -> torch.Tensor:
    # Drops the N prompt outputs: (B, P + N + T, D) -> (B, P + T, D).
    x = output.movedim(token_dim, 1)
    return torch.cat((x[:, :start], x[:, start + count :]), dim=1).movedim(1, token_dim)


def add_vpt(backbone: nn.Module, count: int, deep: bool) -> list[str]:
    """Adds N prompt tokens to ``backbone`` in place: to the first block's input (shallow) or to every block's.

    Args:
        backbone: a timm or OpenCLIP vision transformer (:func:`~ltcl.models.adapters.vit.find_vit`).
        count: N >= 1.
        deep: every block gets its own prompts.

    Returns:
        The names (relative to ``backbone``) of the prompt parameters.

    Raises:
        UserError: not a vision transformer, or adapted already.
    """
    parts = unadapted_vit(backbone, f"vpt_{'deep' if deep else 'shallow'}:{count}")
    prompted = parts.blocks if deep else parts.blocks[:1]
    for index, block in enumerate(prompted):
        prompts = VisualPrompts(
            count, parts.width, parts.patch_size, parts.prefix_tokens, parts.token_dim, factory(block)
        )
        block.add_module(ATTRIBUTE, prompts)
        block.register_forward_pre_hook(functools.partial(_enter, replace=index > 0))
    leave = functools.partial(_leave, start=parts.prefix_tokens, count=count, token_dim=parts.token_dim)
    parts.blocks[-1].register_forward_hook(leave)
    return adapter_parameters(backbone, VisualPrompts)
