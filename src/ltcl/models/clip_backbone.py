"""OpenCLIP image towers: ``model.backbone: open_clip/<arch>`` with ``model.pretrained: <tag>`` (``ltcl[clip]``).

The backbone is the CLIP model's visual tower, whose output is the joint image-text embedding. For a
zero-shot head the text tower encodes one prompt per class before it is dropped; only the visual tower is kept.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.data.inputs import InputSpec, make_input_spec
from ltcl.errors import UserError
from ltcl.models.hub import hub_cache_only, hub_offline_mode, hub_url, unreachable
from ltcl.models.optional import import_optional

PROMPT = "a photo of a {}."
_TEXT_BATCH = 256  # prompts per text-tower forward pass: bounds memory for ImageNet's 1000 classes


def _open_clip(arch: str) -> ModuleType:
    return import_optional("open_clip", f"model.backbone open_clip/{arch}")


def _model_config(open_clip: ModuleType, arch: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(arch) if arch else None
    if cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        hint = f"; close names: {', '.join(close)}" if close else "; open_clip.list_models() lists the names"
        raise UserError(f"OpenCLIP has no architecture '{arch}' (model.backbone open_clip/{arch}){hint}.")
    return cfg


def _tag_config(open_clip: ModuleType, arch: str, pretrained: bool | str) -> dict[str, Any]:
    """The pretrained config of the tag (empty for random init or a local checkpoint path)."""
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is True or (
        isinstance(pretrained, str) and pretrained not in tags and not os.path.isfile(pretrained)
    ):
        raise UserError(
            f"model.pretrained for open_clip/{arch} must be one of its tags ({', '.join(tags) or 'none'}) or "
            f"the path of an OpenCLIP checkpoint, got {pretrained!r}."
        )
    return open_clip.get_pretrained_cfg(arch, pretrained) if pretrained in tags else {}


def _check_quick_gelu(open_clip: ModuleType, arch: str, tag: str, tag_cfg: Mapping, kwargs: Mapping) -> None:
    # open_clip only warns when the activation differs from the one the weights were trained with; the
    # features would be silently wrong, and the architecture must not depend on the tag (resuming builds it
    # without weights), so the user picks the matching architecture.
    model_quick = bool(_model_config(open_clip, arch).get("quick_gelu") or kwargs.get("force_quick_gelu"))
    if bool(tag_cfg.get("quick_gelu")) != model_quick:
        base = arch.removesuffix("-quickgelu")
        want = f"{base}-quickgelu" if tag_cfg.get("quick_gelu") else base
        raise UserError(
            f"OpenCLIP weights '{tag}' were trained {'with' if tag_cfg.get('quick_gelu') else 'without'} "
            f"QuickGELU but open_clip/{arch} uses {'QuickGELU' if model_quick else 'GELU'}: use model.backbone "
            f"open_clip/{want}."
        )


def _url_cache_file(url: str) -> str:
    return os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))  # open_clip's own choice


def _no_connection(open_clip: ModuleType, tag_cfg: Mapping) -> str | None:
    """Why the tag's weights cannot be downloaded now (no connection to their host), or None when they may be (or
    ``HF_HUB_OFFLINE`` is set already). Mirrors open_clip's choice of source: the hub when it has the weights."""
    if tag_cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        return None if hub_offline_mode() else unreachable(hub_url(os.path.split(tag_cfg["hf_hub"])[0]))
    return unreachable(tag_cfg["url"]) if tag_cfg.get("url") else None


def _download(open_clip: ModuleType, arch: str, tag: str, tag_cfg: Mapping, offline: str | None) -> None:
    """Puts the tag's weights into open_clip's cache, or explains in one sentence why they are not there.

    Args:
        offline: why the host cannot be reached (:func:`_no_connection`); None: the network may be used.
    """
    try:
        if offline and not tag_cfg.get("hf_hub") and not os.path.isfile(_url_cache_file(tag_cfg["url"])):
            raise FileNotFoundError(offline)  # the url download would wait for the network
        with hub_cache_only() if offline else contextlib.nullcontext():
            open_clip.download_pretrained(dict(tag_cfg))
    except Exception as err:  # hub, url and filesystem failures all mean "not available here"
        if tag_cfg.get("hf_hub"):
            from huggingface_hub import constants

            offline_set = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
            where = f"the Hugging Face hub cache {constants.HF_HUB_CACHE}{offline_set}"
        else:
            where = f"the OpenCLIP cache {os.path.expanduser('~/.cache/clip')}"
        raise UserError(
            f"The OpenCLIP weights '{tag}' of open_clip/{arch} are not in {where} and could not be downloaded "
            f"({offline or type(err).__name__}); run once with network access, or set model.pretrained to a local "
            "checkpoint path."
        ) from err


@torch.no_grad()
def _text_embeddings(open_clip: ModuleType, model: nn.Module, arch: str, class_names: Sequence[str]) -> torch.Tensor:
    """(C, D) L2-normalised text embeddings of one prompt per class name."""
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except (ImportError, OSError) as err:
        raise UserError(
            f"The tokenizer of open_clip/{arch} (model.zero_shot_head) is not available offline ({err})."
        ) from err
    prompts = [PROMPT.format(str(name).replace("_", " ")) for name in class_names]
    was_training = model.training
    model.eval()
    chunks = [model.encode_text(tokenizer(prompts[i : i + _TEXT_BATCH])) for i in range(0, len(prompts), _TEXT_BATCH)]
    model.train(was_training)
    return F.normalize(torch.cat(chunks).float(), dim=1)


def build_open_clip_backbone(
    arch: str, pretrained: bool | str, kwargs: Mapping[str, Any], class_names: Sequence[str] | None = None
) -> tuple[nn.Module, int, torch.Tensor | None]:
    """Builds the visual tower of ``open_clip/<arch>``.

    Args:
        arch: an OpenCLIP architecture ("ViT-B-32", "ViT-B-16-quickgelu", "RN50", ...).
        pretrained: False for random init, a tag of the architecture ("laion2b_s34b_b79k"), or a checkpoint path.
        kwargs: model.backbone_kwargs, passed to ``open_clip.create_model`` (force_image_size, or config
            overrides such as vision_cfg / text_cfg / embed_dim).
        class_names: when given, the zero-shot classifier weights are computed from them.

    Returns:
        (visual, feature_dim, text_weights): the tower maps (B, 3, S, S) images to (B, feature_dim)
        embeddings; ``text_weights`` is (C, feature_dim), unit rows, or None without class names.
    """
    open_clip = _open_clip(arch)
    model_cfg = _model_config(open_clip, arch)
    tag_cfg = _tag_config(open_clip, arch, pretrained) if pretrained else {}
    offline = None
    if tag_cfg:
        _check_quick_gelu(open_clip, arch, str(pretrained), tag_cfg, kwargs)
        offline = _no_connection(open_clip, tag_cfg)
        _download(open_clip, arch, str(pretrained), tag_cfg, offline)
    # Without a connection the cached weights (and a hub tokenizer) are read without the hub's retries.
    with hub_cache_only() if offline else contextlib.nullcontext():
        try:
            model = open_clip.create_model(arch, pretrained=pretrained or None, **kwargs)
        except (TypeError, KeyError, AssertionError) as err:  # an unknown or ill-typed constructor argument
            raise UserError(
                f"OpenCLIP could not build '{arch}' with model.backbone_kwargs {dict(kwargs)} ({err})."
            ) from err
        except RuntimeError as err:  # a checkpoint path that is not an OpenCLIP checkpoint of this architecture
            raise UserError(f"OpenCLIP could not load model.pretrained {pretrained!r} into {arch} ({err}).") from err
        # The tower's output is the joint embedding, whose width the (possibly overridden) config states.
        feature_dim = int(kwargs.get("embed_dim", model_cfg["embed_dim"]))
        text_weights = None if class_names is None else _text_embeddings(open_clip, model, arch, class_names)
    return model.visual, feature_dim, text_weights


def open_clip_weights_origin(pretrained: bool | str) -> str:
    """Where ``model.pretrained`` weights of an OpenCLIP tower come from, for the run header."""
    if isinstance(pretrained, str) and os.path.isfile(pretrained):
        return f"OpenCLIP checkpoint {pretrained}"
    return f"OpenCLIP pretrained {pretrained}"


def open_clip_input_spec(arch: str, pretrained: bool | str, kwargs: Mapping[str, Any]) -> InputSpec:
    """Input size, mean and std of ``open_clip/<arch>`` from its configs; no weights are read."""
    open_clip = _open_clip(arch)
    from open_clip.transform import PreprocessCfg

    defaults = PreprocessCfg()  # open_clip's defaults: 224 px, the OpenAI CLIP mean and std

    model_cfg = _model_config(open_clip, arch)
    tag_cfg = _tag_config(open_clip, arch, pretrained) if pretrained else {}
    vision_cfg = kwargs.get("vision_cfg", model_cfg["vision_cfg"])
    size = kwargs.get("force_image_size") or vision_cfg.get("image_size", defaults.size)
    mean = tag_cfg.get("mean", defaults.mean)
    std = tag_cfg.get("std", defaults.std)
    # A tower takes its own size only (position embeddings, or the attention pooling of its ResNets);
    # force_image_size builds it for another.
    return make_input_spec(size, mean, std, f"open_clip/{arch}", fixed=True, size_kwarg="force_image_size")
