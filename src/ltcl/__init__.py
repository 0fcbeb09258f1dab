"""ltcl: long-tailed recognition with Aligned Contrastive Learning (ACL), SCL and Balanced Softmax.

The plugin API, ``ltcl.register_objective`` and ``ltcl.register_backbone``, adds a method or a backbone from a
user's own file to the same registries as the built-in ones (they are imported on first use, so that importing
``ltcl`` stays fast).
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "register_objective":
        from ltcl.methods import register_objective

        return register_objective
    if name == "register_backbone":
        from ltcl.models import register_backbone

        return register_backbone
    raise AttributeError(f"module 'ltcl' has no attribute '{name}'")


__all__ = ["__version__", "register_backbone", "register_objective"]
