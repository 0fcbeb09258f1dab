"""Slow float64 references written straight from the paper's equations: one Python loop per sum.

They share nothing with ``ltcl.losses.functional`` except the inputs; autograd through the loops gives the
reference gradients.
"""

import math

import torch


def sim(a, b, tau):
    return torch.dot(a, b) / tau


def acl_reference(z, y, tau, centers=None, weights=None):
    """Eq. 9, mean over anchors with at least one positive term (0 when there is none)."""
    n = z.shape[0]
    labels = [int(v) for v in y]
    num_classes = centers.shape[0] if centers is not None else (weights.shape[0] if weights is not None else 0)

    def w(j):
        return 1.0 if weights is None else weights[j]

    total, anchors = z.sum() * 0.0, 0
    for i in range(n):
        negatives = z.sum() * 0.0
        for k in range(n):
            if labels[k] != labels[i]:
                negatives = negatives + w(labels[k]) * torch.exp(sim(z[i], z[k], tau))
        if centers is not None:
            for j in range(num_classes):
                if j != labels[i]:
                    negatives = negatives + w(j) * torch.exp(sim(z[i], centers[j], tau))
        positives = [z[p] for p in range(n) if p != i and labels[p] == labels[i]]
        if centers is not None:
            positives.append(centers[labels[i]])
        if not positives:
            continue
        term = z.sum() * 0.0
        for p in positives:
            e = torch.exp(sim(z[i], p, tau))
            term = term - torch.log(e / (e + negatives))
        total = total + term / len(positives)
        anchors += 1
    return total / max(anchors, 1)


def scl_reference(z, y, tau):
    """Eq. 1, mean over anchors with |P(i)| > 0 (0 when there is none)."""
    n = z.shape[0]
    labels = [int(v) for v in y]
    total, anchors = z.sum() * 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(sim(z[i], z[a], tau)) for a in range(n) if a != i)
        term = z.sum() * 0.0
        for p in positives:
            term = term - torch.log(torch.exp(sim(z[i], z[p], tau)) / denominator)
        total = total + term / len(positives)
        anchors += 1
    return total / max(anchors, 1)


def balanced_softmax_reference(logits, y, counts):
    total = logits.sum() * 0.0
    for i in range(logits.shape[0]):
        adjusted = [logits[i, j] + math.log(counts[j]) for j in range(logits.shape[1])]
        log_norm = torch.log(sum(torch.exp(a) for a in adjusted))
        total = total - (adjusted[int(y[i])] - log_norm)
    return total / logits.shape[0]


def logit_adjusted_reference(logits, y, counts, tau):
    prior = [c / sum(counts) for c in counts]
    total = logits.sum() * 0.0
    for i in range(logits.shape[0]):
        adjusted = [logits[i, j] + tau * math.log(prior[j]) for j in range(logits.shape[1])]
        log_norm = torch.log(sum(torch.exp(a) for a in adjusted))
        total = total - (adjusted[int(y[i])] - log_norm)
    return total / logits.shape[0]


def conflict_reference(z, y, tau, num_classes):
    """Eq. 7 pair by pair: (conflicting pairs, positive pairs) per class of the anchor."""
    n = z.shape[0]
    labels = [int(v) for v in y]
    conflicts, pairs = [0] * num_classes, [0] * num_classes
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(sim(z[i], z[a], tau))) for a in range(n) if a != i)
        for k in positives:
            q = math.exp(float(sim(z[i], z[k], tau))) / denominator
            pairs[labels[i]] += 1
            conflicts[labels[i]] += int(q > 1.0 / len(positives))
    return conflicts, pairs
