"""ltcl: long-tailed recognition with Aligned Contrastive Learning (ACL), SCL and Balanced Softmax."""

__version__ = "0.1.0"
