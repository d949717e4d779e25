import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from amanita.data import (BAD_IMAGE, BadImageCounter, FungiTasticDataset, create_transforms,
                          default_image_root, load_rgb, scan_images, stratified_subset)
from amanita.io import UserError
from amanita.losses import class_weights_from_counts
from amanita.taxonomy import build_taxonomy
from tests.conftest import run_script
from tests.helpers import TRAIN_IDS, rows

EVAL_CFG = dict(input_size=(3, 32, 32), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3,
                crop_pct=1.0, crop_mode="squash")


def write_images(df, folder, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(df["filename"]):
        Image.new("RGB", size, (k * 20 % 255, 100, 50)).save(folder / f, "JPEG")


def test_default_image_root_follows_fungitastic_layout(tmp_path):
    meta = tmp_path / "metadata" / "FungiTastic"
    assert default_image_root(meta / "FungiTastic-Train.csv") == tmp_path / "FungiTastic" / "train" / "300p"
    assert default_image_root(meta / "FungiTastic-ClosedSet-Val.csv", "500p") == tmp_path / "FungiTastic" / "val" / "500p"
    mini = tmp_path / "metadata" / "FungiTastic-Mini" / "FungiTastic-Mini-Test.csv"
    assert default_image_root(mini) == tmp_path / "FungiTastic-Mini" / "test" / "300p"
    assert default_image_root(tmp_path / "x" / "whatever.csv") == tmp_path / "x"


def test_dataset_items_labels_and_squash_transform(tmp_path):
    df = rows(TRAIN_IDS)
    tax = build_taxonomy([df])
    meta = tmp_path / "metadata" / "FungiTastic"
    meta.mkdir(parents=True)
    df.to_csv(meta / "FungiTastic-Train.csv", index=False)
    write_images(df, tmp_path / "FungiTastic" / "train" / "300p", size=(80, 20))
    ds = FungiTasticDataset(meta / "FungiTastic-Train.csv", tax, create_transforms(EVAL_CFG, train=False))
    img, labels, idx = ds[3]
    assert img.shape == (3, 32, 32) and idx == 3   # squashed, not cropped: 80x20 → 32x32
    assert labels.dtype == torch.long and labels.tolist() == [2, 1, 1, 1, 1, 1, 1]  # Agaricus campestris
    assert ds[6][1].tolist() == [3, 1, 1, 2, 3, 3, 4]  # Merulius tremellosus: own leaf, Phlebia species
    # the colour is constant, so normalisation with mean=std=0.5 maps pixel p to 2p/255-1
    assert img[1].mean().item() == pytest.approx(2 * 100 / 255 - 1, abs=0.03)
    train_tf = create_transforms(EVAL_CFG, train=True)
    assert train_tf(load_rgb(ds.paths[0])).shape == (3, 32, 32)


def test_image_path_column_and_image_root_override(tmp_path):
    df = rows([0, 1])
    write_images(df, tmp_path / "imgs")
    tax = build_taxonomy([df])
    assert FungiTasticDataset(df, tax, image_root=tmp_path / "imgs").paths[0] == str(tmp_path / "imgs" / df.filename[0])
    df["image_path"] = [str(tmp_path / "imgs" / f) for f in df.filename]
    assert FungiTasticDataset(df, tax).paths == df["image_path"].tolist()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"x.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (7, 5)).save(path)
    im = load_rgb(str(path))
    assert im.mode == "RGB" and im.size == (7, 5)


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "red")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(str(tmp_path / "r.jpg")).size == (20, 40)


def test_missing_and_corrupt_images_are_flagged(tmp_path, caplog):
    df = rows([0, 1, 2])
    write_images(df, tmp_path)
    (tmp_path / df.filename[1]).write_bytes(b"not a jpeg")
    (tmp_path / df.filename[2]).unlink()
    ds = FungiTasticDataset(df, build_taxonomy([df]), create_transforms(EVAL_CFG, False), image_root=tmp_path,
                            input_size=(3, 32, 32))
    assert ds[0][1][0] == 0
    for i in (1, 2):
        img, labels, _ = ds[i]
        assert labels[0] == BAD_IMAGE and (labels[1:] == -1).all() and img.shape == (3, 32, 32)
    assert str(tmp_path / df.filename[1]) in caplog.text and str(tmp_path / df.filename[2]) in caplog.text
    assert set(scan_images(ds.paths, workers=1)) == {ds.paths[1], ds.paths[2]}


def test_bad_image_counter_stops_past_the_share():
    c = BadImageCounter(dataset_size=2000, max_fraction=0.001)
    c.update(2)                      # 2 of 2000 = 0.001: still allowed
    with pytest.raises(UserError, match="3 of 2000 images could not be read"):
        c.update(1)


def test_class_weights_hand_computed():
    counts = [1, 4, 16, 0]
    w = class_weights_from_counts(counts, "inverse")
    raw = np.array([1, 1 / 4, 1 / 16])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    assert w[3] == w[:3].max()       # absent from train: finite, as rare as the rarest
    w = class_weights_from_counts(counts, "sqrt_inverse")
    raw = np.array([1, 1 / 2, 1 / 4])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    w = class_weights_from_counts(counts, "effective_number", beta=0.5)
    raw = np.array([0.5 / 0.5, 0.5 / (1 - 0.5 ** 4), 0.5 / (1 - 0.5 ** 16)])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    assert w[:3].mean().item() == pytest.approx(1.0)


def test_compute_class_weights_script(tmp_path):
    train = tmp_path / "train.csv"
    rows(TRAIN_IDS).to_csv(train, index=False)
    run_script("create_taxonomic_mappings.py", "--train-path", train, "--output", tmp_path / "m.json")
    proc = run_script("compute_class_weights.py", "--train-path", train, "--mappings", tmp_path / "m.json",
                      "--method", "inverse", "--output", tmp_path / "w.pt")
    w = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(w) == {"phylum", "class", "order", "family", "genus", "species", "leaf"}
    assert len(w["leaf"]) == 6 and len(w["species"]) == 5
    # species counts [2, 3, 1, 2, 2] → 1/n normalised to mean 1
    raw = 1 / np.array([2, 3, 1, 2, 2])
    np.testing.assert_allclose(w["species"], raw / raw.mean(), rtol=1e-6)
    assert "imbalance" in proc.stdout and "species" in proc.stdout


def test_stratified_subset_groups_observations_and_covers_species():
    ids = [0] * 40 + [1] * 10 + [2] * 6 + [5] * 4
    df = rows(ids, images_per_obs=2)
    sub = stratified_subset(df, 10, np.random.default_rng(0))
    assert len(sub) == 10
    assert set(sub.category_id) == {0, 1, 2, 5}          # round-robin: every species first
    full_obs = df.groupby("observationID").size()
    assert (sub.groupby("observationID").size() == full_obs[sub.observationID.unique()]).all()
    again = stratified_subset(df, 10, np.random.default_rng(0))
    pd.testing.assert_frame_equal(sub, again)
    prefer = stratified_subset(df, 4, np.random.default_rng(1), prefer_species={5})
    assert set(prefer.category_id) == {5}


def test_minimal_subset_script(tmp_path):
    meta = tmp_path / "metadata" / "FungiTastic"
    meta.mkdir(parents=True)
    train = rows([0] * 30 + [1] * 10 + [2] * 10 + [3] * 4 + [5] * 6, images_per_obs=2)
    val = rows([0] * 6 + [1] * 2 + [4] * 4 + [5] * 2, start_obs=900)
    train.to_csv(meta / "FungiTastic-Train.csv", index=False)
    val.to_csv(meta / "FungiTastic-ClosedSet-Val.csv", index=False)
    args = ["--train-path", meta / "FungiTastic-Train.csv", "--val-path", meta / "FungiTastic-ClosedSet-Val.csv",
            "--n-train", 12, "--n-val", 6, "--output-dir", tmp_path / "out"]
    run_script("create_minimal_subset.py", *args)
    small_train = pd.read_csv(tmp_path / "out" / "FungiTastic-Train-Minimal.csv")
    small_val = pd.read_csv(tmp_path / "out" / "FungiTastic-Val-Minimal.csv")
    assert list(small_train.columns) == list(train.columns) + ["image_path"]
    assert len(small_train) <= 12 and len(small_val) <= 6 and len(small_val) > 0
    assert set(small_val.category_id) <= set(small_train.category_id)   # category 4 has no train rows
    assert small_train.image_path[0] == str(tmp_path / "FungiTastic" / "train" / "300p" / small_train.filename[0])
    run_script("create_minimal_subset.py", *args[:-1], tmp_path / "again")
    assert (tmp_path / "again" / "FungiTastic-Train-Minimal.csv").read_bytes() == \
        (tmp_path / "out" / "FungiTastic-Train-Minimal.csv").read_bytes()
