"""Any timm model as a pooled feature extractor: ``model.backbone: timm/<name>`` (extra ``ltcl[timm]``).

The model is built by ``timm.create_model(name, pretrained=..., num_classes=0, **backbone_kwargs)``, so its
forward pass ends at the pooled pre-logits features. Pretrained weights come through timm's own cache (the
Hugging Face hub cache, or torch hub's for older url-only weights) and are fetched only when
``model.pretrained`` is true; when their host does not answer (:mod:`ltcl.models.hub`), only the caches are read
and a missing copy fails at once instead of after the hub's retries.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from torch import nn

from ltcl.data.inputs import InputSpec, make_input_spec
from ltcl.errors import UserError
from ltcl.models.hub import hub_cache_only, hub_offline_mode, hub_url, unreachable
from ltcl.models.optional import import_optional

# Set by ltcl itself; a user value would clash with the feature-extractor contract.
_RESERVED_KWARGS = ("num_classes", "pretrained")


def _timm(name: str) -> ModuleType:
    return import_optional("timm", f"model.backbone timm/{name}")


def _close_names(timm: ModuleType, arch: str) -> str:
    close = timm.list_models(f"*{arch}*")[:5] or difflib.get_close_matches(arch, timm.list_models(), n=5)
    return f"; close names: {', '.join(close)}" if close else "; timm.list_models('*part*') lists the names"


def pretrained_cfg(timm: ModuleType, name: str) -> Any:
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``), or None when it registers none.

    Raises:
        ValueError: the architecture or the tag is unknown.
    """
    if not name:
        raise UserError("model.backbone 'timm/' needs a model name after the slash, e.g. timm/convnext_tiny.")
    arch, _, tag = name.partition(".")
    if not timm.is_model(name):
        raise UserError(f"timm has no model '{arch}' (model.backbone timm/{name}){_close_names(timm, arch)}.")
    try:
        return timm.get_pretrained_cfg(name)
    except RuntimeError as err:  # a known architecture with an unknown tag
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise UserError(
            f"timm model '{arch}' has no pretrained tag '{tag}' (model.backbone timm/{name}); its tags are "
            f"{', '.join(tags[:10]) or 'none'}{' ...' if len(tags) > 10 else ''}."
        ) from err


def _weights_location(cfg: Any, kwargs: Mapping[str, Any]) -> str:
    """Where timm looks for the pretrained file of ``cfg`` (mirrors timm's choice of source)."""
    if kwargs.get("cache_dir"):
        return f"the cache directory {kwargs['cache_dir']} (model.backbone_kwargs.cache_dir)"
    if cfg.hf_hub_id:
        from huggingface_hub import constants  # a timm dependency; read now, after the environment is set

        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        return f"the Hugging Face hub cache {constants.HF_HUB_CACHE}{offline}"
    import torch.hub

    return f"the torch hub cache {os.path.join(torch.hub.get_dir(), 'checkpoints')}"


def timm_weights_origin(name: str, kwargs: Mapping[str, Any]) -> str:
    """Where ``model.pretrained`` weights of ``timm/<name>`` come from, for the run header."""
    cfg = pretrained_cfg(_timm(name), name)
    if kwargs.get("cache_dir"):
        where = f"cache_dir {kwargs['cache_dir']}"
    elif cfg is not None and cfg.hf_hub_id:
        where = "hub cache"
    else:
        where = "torch hub cache"
    source = (cfg.hf_hub_id or cfg.url or cfg.file or name) if cfg is not None else name
    return f"timm pretrained {source} ({where})"


def _no_connection(cfg: Any) -> str | None:
    """Why the pretrained file of ``cfg`` cannot be downloaded now (no connection to its host), or None when it
    may be (or needs no network: a local file, or ``HF_HUB_OFFLINE`` already set). Mirrors timm's choice of source."""
    if cfg.state_dict or cfg.file:
        return None
    if cfg.hf_hub_id:
        return None if hub_offline_mode() else unreachable(hub_url(cfg.hf_hub_id.partition("@")[0]))
    return unreachable(cfg.url)


def _url_cache_file(cfg: Any, kwargs: Mapping[str, Any]) -> str:
    """Where timm keeps the file of a url-only pretrained config (torch hub's checkpoints, or ``cache_dir``)."""
    import torch.hub

    folder = kwargs.get("cache_dir") or os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.join(folder, os.path.basename(urlsplit(cfg.url).path))


def build_timm_backbone(name: str, pretrained: bool | str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    """Builds ``timm/<name>`` without its classifier.

    Args:
        name: timm model name, optionally with a pretrained tag ("vit_base_patch16_clip_224.openai").
        pretrained: True loads timm's pretrained weights (downloading them when not cached).
        kwargs: model.backbone_kwargs, passed to ``timm.create_model`` (img_size, drop_path_rate, ...).

    Returns:
        (backbone, feature_dim): (B, 3, H, W) images -> (B, feature_dim) pooled features.
    """
    timm = _timm(name)
    if isinstance(pretrained, str):
        raise UserError(
            f"model.pretrained for timm/{name} must be true or false, got '{pretrained}': a timm pretrained tag "
            f"goes into the name, e.g. timm/{name.partition('.')[0]}.<tag>."
        )
    reserved = [k for k in _RESERVED_KWARGS if k in kwargs]
    if reserved:
        raise UserError(f"model.backbone_kwargs must not set {', '.join(reserved)}: ltcl sets it for timm/{name}.")
    cfg = pretrained_cfg(timm, name)
    if pretrained and not (cfg and (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise UserError(f"timm model '{name}' has no pretrained weights (model.pretrained); set it to false.")
    offline = _no_connection(cfg) if pretrained else None
    try:
        if offline and not cfg.hf_hub_id and not os.path.isfile(_url_cache_file(cfg, kwargs)):
            raise FileNotFoundError(offline)  # torch hub's download would wait for the network
        with hub_cache_only() if offline else contextlib.nullcontext():  # no hub retries without a network
            model = timm.create_model(name, pretrained=bool(pretrained), num_classes=0, **kwargs)
    except OSError as err:  # hub and url downloads fail with OSError subclasses (offline, no network, no file)
        if not pretrained:
            raise
        raise UserError(
            f"The pretrained weights of timm model '{name}' are not in {_weights_location(cfg, kwargs)} and could "
            f"not be downloaded ({offline or type(err).__name__}); run once with network access, or give a local "
            "file as model.weights with model.pretrained false."
        ) from err
    except (TypeError, AssertionError) as err:  # an unknown or ill-typed constructor argument
        raise UserError(f"timm could not build '{name}' with model.backbone_kwargs {dict(kwargs)} ({err}).") from err
    # head_hidden_size: the pooled width when a pre-logits layer follows the pooling (MobileNetV3's conv_head)
    feature_dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(feature_dim)


def timm_input_spec(name: str, kwargs: Mapping[str, Any]) -> InputSpec:
    """Input size, mean and std of ``timm/<name>`` from its pretrained config; no weights are read.

    ``backbone_kwargs.img_size`` (ViTs built for another resolution) overrides the config's size. The spec is
    ``fixed`` where the config says the model takes that size only (``fixed_input_size``: ViTs, Swin, MLP-Mixer)
    unless ``backbone_kwargs.dynamic_img_size`` is set.
    """
    timm = _timm(name)
    cfg = pretrained_cfg(timm, name)
    if cfg is None:  # an architecture registered without any pretrained config: timm's own defaults
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        size, mean, std, fixed = 224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, False
    else:
        size, mean, std, fixed = cfg.input_size, cfg.mean, cfg.std, bool(cfg.fixed_input_size)
    fixed = fixed and not kwargs.get("dynamic_img_size")
    size_kwarg, any_size_kwarg = _size_kwargs(timm, name) if fixed else ("", "")
    size = kwargs.get("img_size") or size
    return make_input_spec(
        size, mean, std, f"timm/{name}", fixed=fixed, size_kwarg=size_kwarg, any_size_kwarg=any_size_kwarg
    )


def _size_kwargs(timm: ModuleType, name: str) -> tuple[str, str]:
    """Which of ``img_size`` and ``dynamic_img_size`` the model's constructor takes ("" where it does not).

    Read from the source of the model's timm module (no model is built); unknown: neither is offered.
    """
    try:
        source = inspect.getsource(sys.modules[timm.models.model_entrypoint(name.partition(".")[0]).__module__])
    except (KeyError, OSError, RuntimeError, TypeError):
        return "", ""
    takes = [bool(re.search(rf"\b{key}\b", source)) for key in ("img_size", "dynamic_img_size")]
    return "img_size" if takes[0] else "", "dynamic_img_size" if takes[1] else ""
