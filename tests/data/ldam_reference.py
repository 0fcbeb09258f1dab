"""LDAM-DRW's own subset code (Cao et al. 2019), rewritten here as the independent reference: global NumPy seeding,
one shuffle per class in class order."""

import numpy as np


def ldam_img_num_per_cls(cls_num, img_max, imb_type, imb_factor):
    """LDAM-DRW's ``get_img_num_per_cls`` (imb_factor = 1/IF, as LDAM passes it)."""
    img_num_per_cls = []
    if imb_type == "exp":
        for cls_idx in range(cls_num):
            img_num_per_cls.append(int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))))
    else:
        img_num_per_cls = [int(img_max)] * (cls_num // 2) + [int(img_max * imb_factor)] * (cls_num // 2)
    return img_num_per_cls


def ldam_gen_imbalanced_indices(targets, img_num_per_cls, seed=0):
    """LDAM-DRW's ``gen_imbalanced_data`` with the global RNG, returning the dataset indices it keeps."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        targets_np = np.array(targets, dtype=np.int64)
        kept = []
        for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
        return np.concatenate(kept)
    finally:
        np.random.set_state(saved)


def ldam_class_permutations(targets, seed=0):
    """The per-class shuffles of ``gen_imbalanced_data`` (global RNG, class order): {class: its shuffled indices}.
    LDAM keeps the first ``img_num`` of each; a validation split takes the ones right after."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        targets_np = np.array(targets, dtype=np.int64)
        shuffled = {}
        for the_class in np.unique(targets_np):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            shuffled[int(the_class)] = idx
        return shuffled
    finally:
        np.random.set_state(saved)
