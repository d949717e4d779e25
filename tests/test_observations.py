"""Observation-level answers: pooling worked examples, the per-observation table, the poison cost per observation."""
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from amanita.engine import iter_log_probs, predict_batches, predict_observations
from amanita.predictions import with_metadata
from amanita.metrics import compute_metrics, poison_metrics
from amanita.observations import ObservationPooler, observation_codes, pool_observations
from amanita.taxonomy import LEAF, build_taxonomy, encode_labels
from tests.helpers import TRAIN_IDS, rows

TAX = build_taxonomy([rows(TRAIN_IDS)])
PHALLOIDES, CAMPESTRIS = TAX.leaf_index()[0], TAX.leaf_index()[2]  # poisonous, edible


def test_observation_codes_number_by_first_appearance_and_nan_alone():
    codes, first = observation_codes([7, 7, 3, np.nan, 3, np.nan])
    assert codes.tolist() == [0, 0, 1, 2, 1, 3]
    assert first.tolist() == [0, 2, 3, 5]


@pytest.mark.parametrize("combine, expected", [
    ("mean-prob", [0.6, 0.4]),
    # geometric means sqrt(.9*.3) and sqrt(.1*.7), renormalised
    ("mean-logp", [math.sqrt(.27) / (math.sqrt(.27) + math.sqrt(.07)), math.sqrt(.07) / (math.sqrt(.27) + math.sqrt(.07))]),
])
def test_pool_two_images_and_a_single_image_observation(combine, expected):
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    pooled, first, count, extra = pool_observations({"x": p.log()}, ["a", "b", "a"], combine,
                                                    extra={"energy": torch.tensor([1.0, 5.0, 3.0])})
    assert first.tolist() == [0, 1] and count.tolist() == [2, 1]
    assert pooled["x"][0].exp().tolist() == pytest.approx(expected, abs=1e-6)
    assert pooled["x"][1].exp().tolist() == pytest.approx([0.2, 0.8], abs=1e-6)  # one image: unchanged
    assert extra["energy"].tolist() == pytest.approx([2.0, 5.0])


def test_streaming_batches_equal_one_call():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(10, 4, generator=g), 1)
    ids = [1, 2, 1, 3, 3, 3, 4, 2, 5, 1]
    whole, *_ = pool_observations({"x": logp}, ids)
    pooler = ObservationPooler(np.array(ids))
    for idx in ([7, 0, 3], [9, 1, 2, 4], [5, 6, 8]):  # any order, any batch cut
        pooler.add({"x": logp[idx]}, torch.tensor(idx))
    streamed, count, _ = pooler.result()
    assert torch.allclose(streamed["x"], whole["x"], atol=1e-6)
    assert count.tolist() == [3, 2, 3, 1, 1]


def test_unknown_combination_is_refused():
    with pytest.raises(ValueError, match="mean-prob, mean-logp"):
        ObservationPooler([1, 2], "max")


# ---------------------------------------------------------------------- the engine, with a model that returns its input
class Logits(Dataset):
    """Each 'image' is the leaf logits the identity model will output."""

    def __init__(self, logits, labels):
        self.logits, self.labels = logits, labels

    def __len__(self):
        return len(self.logits)

    def __getitem__(self, i):
        return self.logits[i], self.labels[i], i


class Identity(torch.nn.Module):
    def forward(self, x):
        return {"leaf": x}


def _leaf_logits(*leaf_probs):
    out = torch.full((len(leaf_probs), TAX.n_leaves), -30.0)
    for i, probs in enumerate(leaf_probs):
        for leaf, p in probs.items():
            out[i, leaf] = math.log(p)
    return out


def _run(meta, logits, combine="mean-prob"):
    labels = torch.from_numpy(encode_labels(TAX, meta))
    pooler = ObservationPooler(meta["observationID"].to_numpy(), combine)
    loader = DataLoader(Logits(logits, labels), batch_size=2)  # observation 100 spans two batches
    batches = iter_log_probs(Identity(), loader, TAX, torch.device("cpu"))
    preds = with_metadata(predict_batches(batches, TAX, "independent", pooler), meta)
    return preds, with_metadata(predict_observations(pooler, labels, TAX, "independent"), meta)


def test_observation_table_and_poison_cost_worked_example():
    # obs 100: three Death Cap photos, one looks like an edible Agaricus; obs 101: one Agaricus photo
    meta = rows([0, 0, 0, 2], start_obs=100, images_per_obs=3)
    logits = _leaf_logits({PHALLOIDES: .7, CAMPESTRIS: .3}, {PHALLOIDES: .3, CAMPESTRIS: .7},
                          {PHALLOIDES: .8, CAMPESTRIS: .2}, {CAMPESTRIS: .9, PHALLOIDES: .1})
    preds, obs = _run(meta, logits)
    assert obs["observationID"].tolist() == [100, 101] and obs["n_images"].tolist() == [3, 1]
    assert obs["index"].tolist() == [0, 3] and obs["filename"].tolist() == ["0-100.JPG", "3-101.JPG"]
    assert obs[f"{LEAF}_pred"].tolist() == [PHALLOIDES, CAMPESTRIS]
    assert obs[f"{LEAF}_conf"].tolist() == pytest.approx([0.6, 0.9], abs=1e-4)  # (.7+.3+.8)/3
    # a single-image observation is its image
    assert obs.iloc[1][f"{LEAF}_top1"] == preds.iloc[3][f"{LEAF}_top1"]
    assert obs.iloc[1]["unknown_msp"] == pytest.approx(preds.iloc[3]["unknown_msp"], abs=1e-6)
    # per image: one Death Cap photo called edible -> PSC 1 of 4 images; per observation: none of 2
    img_p, obs_p = poison_metrics(preds, TAX), poison_metrics(obs, TAX)
    assert (img_p["psc"], img_p["esc"], img_p["n"], img_p["cost"]) == (1, 0, 4, 25.0)
    assert (obs_p["psc"], obs_p["esc"], obs_p["n"], obs_p["cost"]) == (0, 0, 2, 0.0)
    m = compute_metrics(obs, TAX)
    assert m.summary["keys"]["species"]["top1"] == 1.0 and m.summary["n_samples"] == 2


def test_product_of_experts_lets_a_sharp_image_decide():
    meta = rows([0, 0], start_obs=100, images_per_obs=2)
    logits = _leaf_logits({PHALLOIDES: .45, CAMPESTRIS: .55}, {PHALLOIDES: .95, CAMPESTRIS: .05})
    _, by_prob = _run(meta, logits, "mean-prob")
    _, by_logp = _run(meta, logits, "mean-logp")
    assert by_prob[f"{LEAF}_conf"].iloc[0] == pytest.approx(0.7, abs=1e-4)
    p, q = math.sqrt(.45 * .95), math.sqrt(.55 * .05)
    assert by_logp[f"{LEAF}_conf"].iloc[0] == pytest.approx(p / (p + q), abs=1e-4)


def test_observation_truth_is_the_first_image_like_fungiclef():
    meta = rows([0, 2], start_obs=100, images_per_obs=2)  # a (wrongly) mixed observation
    _, obs = _run(meta, _leaf_logits({CAMPESTRIS: 1.0}, {CAMPESTRIS: 1.0}))
    assert obs[f"{LEAF}_true"].tolist() == [PHALLOIDES]
    assert poison_metrics(obs, TAX)["psc"] == 1


# ---------------------------------------------------------------------- test.py --observation: finds in folders
@pytest.mark.slow
def test_nested_folders_are_finds_of_their_own_and_an_unreadable_find_still_gets_a_record(tmp_path, capsys):
    import json
    import shutil

    from amanita.cli import cli_main, parse_identify_config
    from amanita.identify import identify
    from amanita.taxonomy import build_taxonomy
    from tests.helpers import TRAIN_IDS, make_image_dataset, rows, tiny_checkpoint
    make_image_dataset(tmp_path / "data", n_train=6, n_val=4)
    tiny_checkpoint(tmp_path / "m.pth", build_taxonomy([rows(TRAIN_IDS)]))
    images = sorted((tmp_path / "data" / "FungiTastic" / "val" / "300p").iterdir())
    outer, inner, bad = tmp_path / "outer", tmp_path / "outer" / "inner", tmp_path / "bad"
    for folder, files in ((outer, images[:2]), (inner, images[2:])):
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, folder / f.name)
    bad.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (bad / name).write_text("not a photo")

    def test_py(*args):
        with pytest.raises(SystemExit) as e:
            cli_main(lambda: identify(parse_identify_config("test.py", [str(a) for a in args])))()
        out, _ = capsys.readouterr()
        return e.value.code, [json.loads(line) for line in out.splitlines()]

    code, finds = test_py("--checkpoint", tmp_path / "m.pth", "--workers", 0, "--json", "--observation",
                          outer, inner, bad)
    assert code == 1  # some files could not be read
    by_path = {r["path"]: r for r in finds}
    assert sorted(by_path) == sorted(map(str, (outer, inner, bad)))
    assert by_path[str(outer)]["n_images"] == 2 and by_path[str(inner)]["n_images"] == 2
    assert sorted(by_path[str(outer)]["images"]) == [str(outer / f.name) for f in images[:2]]
    assert by_path[str(bad)]["n_images"] == 0 and "none of its 2 image(s) could be read" in by_path[str(bad)]["error"]
    code, each = test_py("--checkpoint", tmp_path / "m.pth", "--workers", 0, "--json", outer, inner)
    assert code == 0 and len(each) == 4  # per image: the inner folder's images once, not twice
