"""amanita.distill and distill.py: the distillation loss against a hand computation, the frozen
teacher outside the student's module tree, and an end-to-end student run with resume and export."""
import json

import numpy as np
import pytest
import torch

from amanita.checkpoint import load_checkpoint, load_for_eval, unwrap
from amanita.distill import Distiller, DistillationLoss
from amanita.losses import MultiTaskLoss
from amanita.taxonomy import COARSE_RANKS, HEADS, LEAF, build_taxonomy

from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_in_process, run_script, tiny_checkpoint


@pytest.fixture(scope="module")
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def random_outputs(tax, batch=4, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(batch, n, generator=g) for k, n in tax.head_sizes().items()}


def kl_by_hand(teacher_logits, student_logits, t):
    """Mean over the batch of Σ_c p_t (log p_t - log p_s), both at temperature t, times t²."""
    p_t = np.exp(teacher_logits / t) / np.exp(teacher_logits / t).sum(1, keepdims=True)
    p_s = np.exp(student_logits / t) / np.exp(student_logits / t).sum(1, keepdims=True)
    return float((p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean() * t * t)


def test_loss_is_the_weighted_mix_of_hard_labels_and_tempered_kl(tax):
    weights = dict(zip(HEADS, [0.1, 0.1, 0.1, 0.2, 0.3, 1.0]))
    hard = MultiTaskLoss(tax, weights)
    loss = DistillationLoss(hard, tax, alpha=0.7, temperature=3.0)
    student, teacher = random_outputs(tax, seed=0), random_outputs(tax, seed=1)
    labels = torch.tensor([[0, 1, 1, 1, 2, 2, 3]] * 4)
    out = loss(student | {f"teacher/{k}": v for k, v in teacher.items()}, labels)
    # the teacher's coarse targets are its own coarse heads (a multi-task teacher)
    per_head = {k: kl_by_hand(teacher[k].numpy(), student[k].numpy(), 3.0) for k in HEADS}
    for k in HEADS:
        assert out[f"loss/distill_{k}"].item() == pytest.approx(per_head[k], rel=1e-5)
    distill = sum(weights[k] * per_head[k] for k in HEADS) / sum(weights.values())
    assert out["loss/distill"].item() == pytest.approx(distill, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.3 * hard(student, labels)["loss"].item() + 0.7 * distill, rel=1e-5)


def test_student_equal_to_teacher_has_no_distillation_term(tax):
    loss = DistillationLoss(MultiTaskLoss(tax), tax, alpha=1.0, temperature=2.0)
    same = random_outputs(tax)
    out = loss(same | {f"teacher/{k}": v for k, v in same.items()}, torch.full((4, 7), -1))
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_single_head_teacher_gives_coarse_targets_summed_up_the_tree(tax):
    """A single-head teacher (its outputs are the leaf alone): its coarse targets are summed leaf probabilities."""
    loss = DistillationLoss(MultiTaskLoss(tax), tax, alpha=1.0, temperature=1.0)
    leaf = torch.randn(3, tax.n_leaves, generator=torch.Generator().manual_seed(2))
    leaf_p = leaf.softmax(1).numpy()
    student = random_outputs(tax, batch=3, seed=3)
    out = loss(student | {"teacher/leaf": leaf}, torch.full((3, 7), -1))
    for rank in COARSE_RANKS:
        target = leaf_p @ tax.rollup_matrix(rank).numpy()
        log_s = torch.log_softmax(student[rank], 1).numpy()
        want = float((target * (np.log(target.clip(1e-30)) - log_s)).sum(1).mean())
        assert out[f"loss/distill_{rank}"].item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_distiller_trains_the_student_only(tax, tmp_path):
    teacher, cfg = tiny_checkpoint(tmp_path / "t.pth", tax, seed=0)
    student, _ = tiny_checkpoint(tmp_path / "s.pth", tax, seed=1)
    wrapped = Distiller(student, teacher).train()
    assert unwrap(wrapped) is student and not teacher.training and student.training
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in student.state_dict()}
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in student.parameters()]
    out = wrapped(torch.randn(2, *cfg["input_size"]))
    assert set(out) == set(HEADS) | {f"teacher/{k}" for k in HEADS}
    loss = DistillationLoss(MultiTaskLoss(tax), tax, alpha=0.5)(out, torch.full((2, 7), -1))["loss"]
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.heads[LEAF].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_distill_script_trains_resumes_and_exports_a_student(tmp_path, tax):
    data = make_image_dataset(tmp_path, n_train=24, n_val=12)
    mappings = tmp_path / "m.json"
    tax.save(mappings)
    tiny_checkpoint(tmp_path / "teacher.pth", tax)
    common = ["--teacher", tmp_path / "teacher.pth", "--train-path", data["train"], "--val-path", data["val"],
              "--mappings", mappings, "--batch-size", 8, "--workers", 0, "--auto-augment", "none",
              "--save-dir", tmp_path / "student", "--model", "mobilenetv3_small_050", "--lr", 1e-3]
    proc = run_in_process("distill.py", *common, "--epochs", 1)
    assert "train/distill/loss" in json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert "leaf" in proc.stdout
    run_in_process("distill.py", *common, "--epochs", 2)  # resumes last.pth for the second epoch
    ckpt = load_checkpoint(tmp_path / "student" / "last.pth")
    assert ckpt["epoch"] == 2 and ckpt["architecture"] == "mobilenetv3_small_050"
    assert ckpt["args"]["teacher"] == str(tmp_path / "teacher.pth")
    assert len(ckpt["history"]) == 2 and ckpt["history"][1]["step"] == 2 * ckpt["history"][0]["step"]
    assert not any(k.startswith(("teacher", "module.")) for k in ckpt["model"])
    model, _, cfg, _ = load_for_eval(tmp_path / "student" / "best_model.pth")
    assert cfg["input_size"] == (3, 32, 32)  # the teacher's data config
    assert set(model(torch.zeros(1, *cfg["input_size"]))) == set(HEADS)
    pytest.importorskip("onnxruntime")
    run_script("export.py", "--checkpoint", tmp_path / "student" / "best_model.pth", "--output-dir", tmp_path / "onnx",
               "--check-csv", data["val"], "--check-images", 4, "--atol", 1e-4)
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["output_sizes"] == tax.head_sizes()
