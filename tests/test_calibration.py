import pytest
import torch
import torch.nn as nn

from amanita.calibration import (apply_temperatures, calibration_summary, cross_fitted_ece, fit_temperature,
                                 lineage_confidence)
from amanita.decode import decode, rank_log_probs
from amanita.engine import forward_tta
from amanita.taxonomy import LEAF, RANKS, build_taxonomy
from tests.helpers import TRAIN_IDS, rows

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def sample_labels(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    """Labels drawn from softmax(logits / temperature): that temperature is the calibrated one."""
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=g).squeeze(1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    logits = torch.randn(20000, 10, generator=torch.Generator().manual_seed(1)) * 3
    t = fit_temperature(logits, sample_labels(logits, true_t))
    assert t == pytest.approx(true_t, rel=0.05)


def test_fit_temperature_ignores_unknown_labels_and_lowers_nll():
    logits = torch.randn(4000, 6, generator=torch.Generator().manual_seed(2)) * 4
    labels = sample_labels(logits, 2.0)
    labels[::3] = -1
    t = fit_temperature(logits, labels)
    known = labels >= 0
    nll = lambda s: nn.functional.cross_entropy(logits[known] / s, labels[known]).item()  # noqa: E731
    assert nll(t) < nll(1.0) and nll(t) <= min(nll(t * 0.9), nll(t * 1.1))
    assert fit_temperature(logits, torch.full((4000,), -1)) == 1.0


def test_apply_temperatures_rescales_each_key_and_keeps_the_argmax():
    logp = {"leaf": torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), 1),
            "genus": torch.log_softmax(torch.tensor([[1.0, 3.0]]), 1)}
    out = apply_temperatures(logp, {"leaf": 2.0, "genus": 1.0})
    expected = torch.softmax(torch.tensor([[1.0, 0.0, -0.5]]), 1)  # logits / 2
    assert torch.allclose(out["leaf"].exp(), expected, atol=1e-6)
    assert out["genus"] is logp["genus"]
    assert apply_temperatures(logp, None) is logp
    assert out["leaf"].argmax(1).item() == 0


def test_calibration_summary_lowers_ece_of_an_overconfident_model():
    logits = torch.randn(6000, 8, generator=torch.Generator().manual_seed(3)) * 4
    labels = sample_labels(logits, 3.0)  # the model is overconfident: calibrated at T = 3
    logp = {k: torch.log_softmax(logits, 1) for k in (LEAF,) + RANKS}
    all_labels = labels[:, None].repeat(1, 7)
    s = calibration_summary(logp, all_labels, "synthetic")
    row = s["keys"]["genus"]
    assert s["temperatures"]["genus"] == pytest.approx(3.0, rel=0.08)
    assert row["ece_after"] < 0.03 < 0.15 < row["ece_before"]
    assert row["ece_after_cross_fitted"] < 0.04
    assert set(cross_fitted_ece(logp, all_labels)) == {LEAF, *RANKS}


# Helper taxonomy leaves: 0 A. phalloides, 1 A. muscaria, 2 Agaricus campestris,
# 3 Merulius tremellosus (synonym of 4), 4 Phlebia tremellosa, 5 Morchella esculenta.
P = torch.tensor([[0.10, 0.30, 0.20, 0.15, 0.15, 0.10]])


def test_lineage_confidence_is_the_mass_of_the_predicted_node(tax):
    anc = tax.ancestor_matrix()
    preds = {LEAF: torch.tensor([1])} | {r: anc[1, j][None] for j, r in enumerate(RANKS)}  # A. muscaria's lineage
    conf = lineage_confidence(P.log(), preds, anc)
    # Basidiomycota 0.9, Agaricomycetes 0.9, Agaricales 0.6, Amanitaceae 0.4, Amanita 0.4, A. muscaria 0.3
    expected = [0.9, 0.9, 0.6, 0.4, 0.4, 0.3, 0.3]
    assert [round(conf[k].item(), 6) for k in RANKS + (LEAF,)] == expected


def test_lineage_confidence_of_a_synonym_sums_the_species(tax):
    anc = tax.ancestor_matrix()
    preds = {LEAF: torch.tensor([4])} | {r: anc[4, j][None] for j, r in enumerate(RANKS)}  # Phlebia tremellosa
    conf = lineage_confidence(P.log(), preds, anc)
    assert conf["species"].item() == pytest.approx(0.30)  # both scientificNames of the species
    assert conf[LEAF].item() == pytest.approx(0.15)


def test_lineage_confidence_of_a_broken_lineage_drops_to_zero(tax):
    anc = tax.ancestor_matrix()
    preds = {LEAF: torch.tensor([1])} | {r: anc[1, j][None] for j, r in enumerate(RANKS)}
    preds["genus"] = anc[4, 4][None]  # Phlebia under Amanitaceae: not a real lineage
    conf = lineage_confidence(P.log(), preds, anc)
    assert conf["family"].item() == pytest.approx(0.4)
    assert conf["genus"].item() == conf["species"].item() == conf[LEAF].item() == 0.0


@pytest.mark.parametrize("mode", ["consistent", "independent"])
def test_lineage_confidences_never_rise_towards_the_leaf(tax, mode):
    g = torch.Generator().manual_seed(4)
    outputs = {"leaf": torch.randn(500, tax.n_leaves, generator=g) * 3}
    outputs |= {r: torch.randn(500, tax.num_classes(r), generator=g) * 3 for r in RANKS[:-1]}
    logp = rank_log_probs(outputs, tax)
    anc = tax.ancestor_matrix()
    conf = lineage_confidence(logp[LEAF], decode(logp, anc, mode), anc)
    chain = torch.stack([conf[k] for k in RANKS + (LEAF,)], 1)
    assert (chain[:, 1:] <= chain[:, :-1]).all()
    assert ((chain >= 0) & (chain <= 1 + 1e-6)).all()
    # the per-head confidence, unlike the lineage one, does rise somewhere: what issue 12 saw
    head = torch.stack([logp[r].gather(1, decode(logp, anc, mode)[r][:, None]).squeeze(1) for r in RANKS], 1)
    assert (head[:, 1:] > head[:, :-1]).any()


class Asymmetric(nn.Module):
    """Logits = the mean of the left and of the right half of the image: a flip swaps them."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return {"leaf": torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)}


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :2] = 1.0
    assert forward_tta(Asymmetric(), x)["leaf"].tolist() == [[1.0, 0.0]]
    assert forward_tta(Asymmetric(), x, "flip")["leaf"].tolist() == [[0.5, 0.5]]
    with pytest.raises(ValueError, match="rotate"):
        forward_tta(Asymmetric(), x, "rotate")


# ---------------------------------------------------------------------- validate.py --calibrate
def write_checkpoint(path, tax):
    """An untrained tiny multi-task checkpoint in the format the training scripts write."""
    from amanita.checkpoint import save_checkpoint
    from amanita.backbone import resolve_data_config
    from amanita.model import create_multitask_model
    torch.manual_seed(0)
    model = create_multitask_model("beit_base_patch16_224", tax, model_args=SMALL, pretrained=False)
    with torch.no_grad():  # spread the untrained logits so the confidences are far from calibrated
        for head in model.heads.values():
            head.weight.mul_(40)
    save_checkpoint({"model": model.state_dict(), "architecture": "beit_base_patch16_224", "model_kwargs": SMALL,
                     "kind": "multitask", "head_mode": "residual", "head_sizes": tax.head_sizes(),
                     "taxonomy": tax.to_dict(), "taxonomy_sha256": tax.sha256(), "epoch": 1, "step": 1,
                     "data_config": resolve_data_config(model.backbone)}, path)


@pytest.mark.slow
def test_validate_calibrate_stores_temperatures_and_reports_ece_before_and_after(tmp_path):
    import json

    import pandas as pd

    from amanita.checkpoint import load_checkpoint
    from tests.helpers import image_dataset_and_taxonomy
    from tests.test_report import run_validate
    data, tax = image_dataset_and_taxonomy(tmp_path / "data", n_train=6, n_val=30)
    ckpt = tmp_path / "best_model.pth"
    write_checkpoint(ckpt, tax)
    out = tmp_path / "out"
    code, stdout, err = run_validate("--checkpoint", ckpt, "--val-path", data["val"], "--calibrate", "--workers", 0,
                                     "--output-dir", out, "--tta", "flip", "--decode", "independent")
    assert code == 0, err
    stored = load_checkpoint(ckpt)
    temps = stored["temperatures"]
    assert set(temps) == {LEAF, *RANKS} and all(0.05 <= t <= 20 for t in temps.values())
    assert temps[LEAF] > 1.5  # the blown-up logits are overconfident: flattened
    assert "stored in" in stdout
    m = json.loads((out / "metrics.json").read_text())
    cal = m["provenance"]["calibration"]
    assert cal["temperatures"] == temps and m["provenance"]["tta"] == "flip"
    assert cal["keys"][LEAF]["ece_after"] < cal["keys"][LEAF]["ece_before"]
    # the predictions use the stored temperatures, so the report's ECE is the "after" one
    assert m["model"]["keys"][LEAF]["ece"] == pytest.approx(cal["keys"][LEAF]["ece_after"], abs=1e-4)
    preds = pd.read_csv(out / "predictions.csv")
    chain = preds[[f"{k}_lconf" for k in RANKS + (LEAF,)]].to_numpy()
    assert (chain[:, 1:] <= chain[:, :-1] + 1e-6).all()
    assert set(m["model"]["lineage_calibration"]) == {LEAF, *RANKS}
    html = (out / "validation_report.html").read_text()
    assert "ECE before" in html and "Lineage confidence" in html
    code, _, err = run_validate("--checkpoint", ckpt, "--val-path", data["val"], "--calibrate", "--no-temperatures")
    assert code == 2 and "--calibrate" in err


def test_readme_explains_calibration_and_tta_with_flags_that_exist():
    from amanita.cli import parse_identify_config, parse_validate_config
    from tests.helpers import ROOT
    readme = (ROOT / "README.md").read_text()
    for words in ("validate.py --checkpoint", "--calibrate", "--tta flip", "--no-temperatures", "Lineage confidence",
                  "probability mass of the predicted node", "ECE before and after"):
        assert words in readme, words
    args = parse_identify_config("test.py", ["--checkpoint", "x.pth", "--tta", "flip", "--no-temperatures", "a.jpg"])
    assert args.tta == "flip" and args.no_temperatures
    args = parse_validate_config("validate.py", ["--checkpoint", "x.pth", "--val-path", "v.csv", "--calibrate",
                                                 "--tta", "flip"])
    assert args.calibrate and args.tta == "flip"
