"""Knowledge distillation: a small timm backbone with the six heads learns from a trained amanita model.

The teacher's soft targets at every head (the five coarse ranks and the leaf, temperature
``T``) are matched by the student's heads with ``T² · KL(teacher ‖ student)``, next to the usual
hard-label multi-task loss: ``loss = (1 - alpha) · hard + alpha · distill`` (Hinton et al., 2015).
The teacher runs frozen, in eval mode, on the same augmented batch as the student, so the two
see identical crops. It is held outside the module tree of :class:`Distiller`, so checkpoints,
DDP and the optimizer see the student only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from amanita import checkpoint as ck
from amanita.config import DistillConfig
from amanita.io import UserError
from amanita.decode import rank_log_probs
from amanita.taxonomy import HEADS, Taxonomy

TEACHER = "teacher/"  # prefix of the teacher's outputs in the Distiller's output dict


class Distiller(nn.Module):
    """Training forward of the student (``module``) and the frozen teacher on the same images.

    Returns ``{head: student logits} | {"teacher/<head>": teacher logits}``. The student is
    registered as ``module``, so :func:`amanita.checkpoint.unwrap` and the EMA see only it.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.module = student
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))  # not a submodule

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # dropout/drop-path off: the targets are the teacher's answers
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(images)
        with torch.no_grad():
            soft = self.teacher(images)
        return out | {TEACHER + k: v.detach() for k, v in soft.items()}


class DistillationLoss(nn.Module):
    """``(1 - alpha) · hard(student) + alpha · Σ_head w · T² · KL(teacher_T ‖ student_T) / Σ w``.

    ``hard`` is the :class:`~amanita.losses.MultiTaskLoss` of the run, whose head weights also
    weigh the distillation terms. A single-head teacher's coarse targets are its leaf
    probabilities summed up the tree.
    Returns the hard loss's dict plus ``loss/distill`` and ``loss/distill_<head>``.
    """

    def __init__(self, hard: nn.Module, taxonomy: Taxonomy, alpha: float = 0.5, temperature: float = 2.0):
        super().__init__()
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise UserError(f"--distill-alpha must be in [0, 1] and --distill-temperature > 0 "
                            f"(got {alpha}, {temperature})")
        self.hard, self.taxonomy, self.alpha, self.temperature = hard, taxonomy, alpha, temperature
        self.weights = {k: float(getattr(hard, "head_weights", {}).get(k, 1.0)) for k in HEADS}
        self.register_buffer("ancestors", taxonomy.ancestor_matrix(), persistent=False)  # (n_leaves, 6)

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        student = {k: v for k, v in outputs.items() if not k.startswith(TEACHER)}
        teacher = {k[len(TEACHER):]: v for k, v in outputs.items() if k.startswith(TEACHER)}
        out = self.hard(student, labels)
        if not teacher:  # evaluation or a plain model: the hard loss alone
            return out
        targets = rank_log_probs(teacher, self.taxonomy, self.ancestors)
        t, total, norm = self.temperature, 0.0, 0.0
        for key in HEADS:
            if self.weights[key] == 0.0:
                continue
            log_s = F.log_softmax(student[key].float() / t, dim=1)
            log_t = F.log_softmax(targets[key].float() / t, dim=1)
            kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t
            out[f"loss/distill_{key}"] = kl
            total, norm = total + self.weights[key] * kl, norm + self.weights[key]
        out["loss/distill"] = total / max(norm, 1e-12)
        out["loss"] = (1.0 - self.alpha) * out["loss"] + self.alpha * out["loss/distill"]
        return out


@dataclass
class Teacher:
    model: nn.Module
    data_config: dict      # the student is fed with it too
    description: str

    def criterion(self, hard: nn.Module, taxonomy: Taxonomy, cfg: DistillConfig) -> DistillationLoss:
        return DistillationLoss(hard, taxonomy, cfg.distill_alpha, cfg.distill_temperature)

    def wrap(self, student: nn.Module) -> Distiller:
        return Distiller(student, self.model)


def load_teacher(cfg: DistillConfig, taxonomy: Taxonomy, device) -> Teacher:
    """``--teacher``: the model (EMA weights when present) and its data config.

    Its taxonomy must be the run's: the soft targets are indexed by the same classes.
    """
    path = cfg.teacher
    model, tax, data_config, info = ck.load_for_eval(path, device)
    if tax.sha256() != taxonomy.sha256():
        raise UserError(f"--teacher {path} was trained with another taxonomy (sha256 {tax.sha256()[:12]}…, "
                        f"this run {taxonomy.sha256()[:12]}…); pass its mappings with --mappings")
    text = (f"teacher {path}: {info['architecture']} ({info['kind']}, epoch {info['epoch']}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters); "
            f"alpha {cfg.distill_alpha}, temperature {cfg.distill_temperature}")
    return Teacher(model, dict(data_config), text)
