"""Starting the heads of a multi-task model from a single-head classifier (one row per ``category_id``), such as
the stock model's."""
from __future__ import annotations

import torch
import torch.nn as nn

from amanita.taxonomy import COARSE_RANKS, LEAF, Taxonomy


@torch.no_grad()
def init_from_single_head(model: nn.Module, single: nn.Module, taxonomy: Taxonomy) -> None:
    """Start ``model`` from a single-head model (:mod:`amanita.model`): its backbone and its head."""
    backbone_sd = {k: v for k, v in single.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.backbone.load_state_dict(backbone_sd, strict=False)
    if unexpected or missing:
        raise ValueError(f"the single-head model's weights do not fit the backbone "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    head = single.get_classifier()
    init_heads_from_classifier(model, head.weight.detach(), head.bias.detach(), taxonomy)


@torch.no_grad()
def init_heads_from_classifier(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor,
                               taxonomy: Taxonomy) -> None:
    """Heads from a single-head classifier (one row per ``category_id``).

    The leaf head takes the row of each leaf's ``category_id``, so leaf logits equal the
    single-head model's at step 0. In the residual mode the coarse heads start at zero, so each coarse
    rank starts as its leaf probabilities summed up the tree, exactly. In the
    independent mode each coarse head starts from its descendants' rows: mean weight, mean
    bias plus log(number of descendants), a linear stand-in for the log-sum-exp of their
    logits (which it equals when the descendants' logits are equal).
    """
    ids = torch.tensor(taxonomy.category_ids)
    if ids.max() >= weight.shape[0]:
        raise ValueError(f"the single-head classifier has {weight.shape[0]} outputs but the taxonomy has "
                         f"category_id {int(ids.max())}")
    w_leaf, b_leaf = weight[ids], bias[ids]  # (n_leaves, dim), rows in leaf order
    model.heads[LEAF].weight.copy_(w_leaf)
    model.heads[LEAF].bias.copy_(b_leaf)
    for rank in COARSE_RANKS:
        if rank in model.residual_ranks:
            model.heads[rank].weight.zero_()
            model.heads[rank].bias.zero_()
            continue
        m = taxonomy.rollup_matrix(rank, dtype=weight.dtype)  # (n_leaves, n_classes)
        n = m.sum(0)
        has = n > 0
        head = model.heads[rank]
        head.weight[has] = (m.T @ w_leaf)[has] / n[has, None]
        head.bias[has] = (m.T @ b_leaf)[has] / n[has] + torch.log(n[has])
