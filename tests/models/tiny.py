"""Tiny foundation backbones for fast tests (random init, 32 px)."""

# A 2-block ViT: the timm ViT code path (qkv/proj/fc1/fc2) at a fraction of a second per build.
TINY_VIT = {"backbone": "timm/vit_tiny_patch16_224", "backbone_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}
# A 1-layer OpenCLIP ViT; vocabulary and context length stay those of the bundled CLIP tokenizer.
TINY_CLIP_KWARGS = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
