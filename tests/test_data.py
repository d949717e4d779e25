import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from amanita.data import (BAD_IMAGE, BadImageCounter, DeviceLoader, FungiTasticDataset, check_normalised,
                          create_transforms, default_image_root, load_rgb, make_loader, read_image, scan_images,
                          read_split, stratified_subset, to_model_input)
from amanita.io import UserError
from amanita.taxonomy import build_taxonomy
from tests.helpers import TRAIN_IDS, rows, run_in_process

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
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and idx == 3  # squashed, not cropped: 80x20 → 32x32
    assert labels.dtype == torch.long and labels.tolist() == [2, 1, 1, 1, 1, 1, 1]  # Agaricus campestris
    assert ds[6][1].tolist() == [3, 1, 1, 2, 3, 3, 4]  # Merulius tremellosus: own leaf, Phlebia species
    assert abs(img[1].float().mean().item() - 100) < 3  # the JPEG's constant green channel
    # normalised on the device: mean=std=0.5 maps pixel p to 2p/255-1
    x = to_model_input(img[None], torch.device("cpu"), EVAL_CFG["mean"], EVAL_CFG["std"])
    assert x.dtype == torch.float32 and torch.allclose(x, img[None].float() * 2 / 255 - 1, atol=1e-6)
    train_tf = create_transforms(EVAL_CFG, train=True)
    assert train_tf(load_rgb(ds.path(0))).shape == (3, 32, 32) and train_tf(read_image(ds.path(0))).dtype == torch.uint8


def test_image_path_column_and_image_root_override(tmp_path):
    df = rows([0, 1])
    write_images(df, tmp_path / "imgs")
    tax = build_taxonomy([df])
    ds = FungiTasticDataset(df, tax, image_root=tmp_path / "imgs")
    assert ds.path(0) == str(tmp_path / "imgs" / df.filename[0])
    assert isinstance(ds.paths, np.ndarray) and ds.paths.dtype.kind == "S"  # one buffer, no str objects
    df["image_path"] = [str(tmp_path / "imgs" / f) for f in df.filename]
    assert [FungiTasticDataset(df, tax).path(i) for i in range(2)] == df["image_path"].tolist()


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
        assert labels[0] == BAD_IMAGE and (labels[1:] == -1).all()
        assert img.shape == (3, 32, 32) and img.dtype == torch.uint8  # collates with the good ones
    assert str(tmp_path / df.filename[1]) in caplog.text and str(tmp_path / df.filename[2]) in caplog.text
    paths = [ds.path(i) for i in range(len(ds))]
    assert set(scan_images(paths, workers=1)) == {paths[1], paths[2]}


def test_bad_image_counter_stops_past_the_share():
    c = BadImageCounter(dataset_size=2000, max_fraction=0.001)
    c.update(2)                      # 2 of 2000 = 0.001: still allowed
    with pytest.raises(UserError, match="3 of 2000 images could not be read"):
        c.update(1)


@pytest.mark.slow
def test_compute_class_weights_script(tmp_path):
    train = tmp_path / "train.csv"
    rows(TRAIN_IDS).to_csv(train, index=False)
    run_in_process("create_taxonomic_mappings.py", "--train-path", train, "--output", tmp_path / "m.json")
    proc = run_in_process("compute_class_weights.py", "--train-path", train, "--mappings", tmp_path / "m.json",
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


@pytest.mark.slow
def test_minimal_subset_script(tmp_path):
    meta = tmp_path / "metadata" / "FungiTastic"
    meta.mkdir(parents=True)
    train = rows([0] * 30 + [1] * 10 + [2] * 10 + [3] * 4 + [5] * 6, images_per_obs=2)
    val = rows([0] * 6 + [1] * 2 + [4] * 4 + [5] * 2, start_obs=900)
    train.to_csv(meta / "FungiTastic-Train.csv", index=False)
    val.to_csv(meta / "FungiTastic-ClosedSet-Val.csv", index=False)
    args = ["--train-path", meta / "FungiTastic-Train.csv", "--val-path", meta / "FungiTastic-ClosedSet-Val.csv",
            "--n-train", 12, "--n-val", 6, "--output-dir", tmp_path / "out"]
    run_in_process("create_minimal_subset.py", *args)
    small_train = pd.read_csv(tmp_path / "out" / "FungiTastic-Train-Minimal.csv")
    small_val = pd.read_csv(tmp_path / "out" / "FungiTastic-Val-Minimal.csv")
    assert list(small_train.columns) == list(train.columns) + ["image_path"]
    assert len(small_train) <= 12 and len(small_val) <= 6 and len(small_val) > 0
    assert set(small_val.category_id) <= set(small_train.category_id)   # category 4 has no train rows
    assert small_train.image_path[0] == str(tmp_path / "FungiTastic" / "train" / "300p" / small_train.filename[0])
    run_in_process("create_minimal_subset.py", *args[:-1], tmp_path / "again")
    assert (tmp_path / "again" / "FungiTastic-Train-Minimal.csv").read_bytes() == \
        (tmp_path / "out" / "FungiTastic-Train-Minimal.csv").read_bytes()


def _photo(path, size=(40, 30), **save):
    """A smooth colour gradient (JPEG-friendly, unlike noise) saved at ``path``."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8)).save(path, **save)


def test_read_image_decodes_jpeg_like_pil_and_falls_back_for_the_rest(tmp_path):
    _photo(tmp_path / "a.jpg", quality=95)
    t = read_image(tmp_path / "a.jpg")
    ref = torch.from_numpy(np.array(load_rgb(str(tmp_path / "a.jpg")))).permute(2, 0, 1)
    assert t.dtype == torch.uint8 and t.shape == (3, 30, 40)
    assert (t.int() - ref.int()).abs().max() <= 2  # libjpeg-turbo both; IDCT rounding may differ by a unit
    im = Image.new("RGB", (40, 20), "red")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (3, 40, 20)
    Image.new("LA", (7, 5), (30, 128)).save(tmp_path / "la.png")  # PIL path: alpha over white
    assert read_image(tmp_path / "la.png")[:, 0, 0].tolist() == [142, 142, 142]
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # torchvision refuses, PIL names it
    with pytest.raises(OSError, match="(?i)truncated"):
        read_image(tmp_path / "cut.jpg")


def test_uint8_resizes_match_timms_own_steps(tmp_path):
    """The v2 uint8 kernels stand in for timm's v1 steps: same crop (same draws), same pixels ±1."""
    import random

    from timm.data import create_transform
    _photo(tmp_path / "a.jpg", (120, 90), quality=95)
    img = read_image(tmp_path / "a.jpg")
    cfg = dict(EVAL_CFG, interpolation="bicubic")
    ours, theirs = create_transforms(cfg, False), create_transform(**cfg, use_prefetcher=True)
    assert (ours(img).int() - theirs(img).int()).abs().max() <= 1
    crop = create_transforms(cfg, True, hflip=0, vflip=0, auto_augment=None).tensor_steps[0]
    timm_crop = create_transform(**cfg, is_training=True, scale=(0.8, 1.0), hflip=0, color_jitter=None,
                                 use_prefetcher=True).transforms[0]
    random.seed(3)
    a = crop(img)
    random.seed(3)
    b = timm_crop(img)
    assert a.shape == b.shape == (3, 32, 32) and (a.int() - b.int()).abs().max() <= 1


def test_color_jitter_only_when_asked():
    names = lambda tf: [type(t).__name__ for t in tf.tensor_steps + tf.pil_steps]  # noqa: E731
    assert names(create_transforms(EVAL_CFG, True, auto_augment=None)) == [
        "RandomResizedCropUint8", "RandomHorizontalFlip", "RandomVerticalFlip"]  # timm would add ColorJitter
    assert names(create_transforms(EVAL_CFG, True, auto_augment=None, color_jitter=0.3))[-1] == "ColorJitter"
    with_aa = create_transforms(EVAL_CFG, True, auto_augment="rand-m9-n2", color_jitter=0.3)
    assert names(with_aa)[-2:] == ["RandAugment", "ColorJitter"]  # timm would drop it beside RandAugment
    text = repr(with_aa)
    assert "RandomResizedCropAndInterpolation(size=(32, 32), scale=(0.8, 1.0)" in text and "(on PIL)" in text
    assert len(text.splitlines()) == 1 + 5  # a header, then one line per step


@pytest.fixture
def train_set(tmp_path):
    df = rows(TRAIN_IDS)
    for f in df.filename:
        _photo(tmp_path / f, (48, 36))
    tf = create_transforms(EVAL_CFG, True, auto_augment="rand-m9-n2", color_jitter=0.2)
    ds = FungiTasticDataset(df, build_taxonomy([df]), tf, image_root=tmp_path, input_size=(3, 32, 32))
    ds.seed = 7
    return ds


def test_seeded_augmentations_follow_seed_epoch_and_index_in_any_process(train_set):
    ds = train_set
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(torch.rand(3), before)  # the main process's streams are restored
    assert torch.equal(a, torch.stack([ds[i][0] for i in range(len(ds))]))
    ds.set_epoch(1)
    b = torch.stack([ds[i][0] for i in range(len(ds))])
    assert not torch.equal(a, b)
    # a loader built once, with persistent workers, serves each epoch's crops after set_epoch
    loader = make_loader(ds, 4, 2, torch.device("cpu"), prefetch_factor=2)
    for epoch, expected in ((0, a), (1, b), (0, a)):
        ds.set_epoch(epoch)
        got = torch.cat([x for x, _, _ in loader])
        assert got.dtype == torch.uint8 and torch.equal(got, expected), epoch
    assert loader._iterator is not None and loader._iterator._persistent_workers


def test_device_loader_normalises_and_the_engine_refuses_raw_uint8(train_set):
    loader = make_loader(train_set, 5, 0, torch.device("cpu"))
    x, labels, idx = next(iter(DeviceLoader(loader, "cpu", EVAL_CFG, channels_last=True)))
    raw, _, _ = next(iter(loader))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, raw.float() / 127.5 - 1, atol=1e-6) and idx.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(labels, train_set.labels[:5])
    with pytest.raises(TypeError, match="DeviceLoader"):
        check_normalised(raw)


def test_dataset_keeps_only_compact_arrays(train_set):
    kinds = {k: type(v) for k, v in vars(train_set).items()}
    assert not [k for k, t in kinds.items() if issubclass(t, (pd.DataFrame, pd.Series, list, dict))], kinds
    assert train_set.labels.shape == (len(TRAIN_IDS), 7)


def test_read_split_reads_only_what_amanita_uses(tmp_path):
    df = rows(TRAIN_IDS)
    df["captions"] = "a long caption " * 20
    df.to_csv(tmp_path / "t.csv", index=False)
    assert "captions" not in read_split(tmp_path / "t.csv").columns  # never parsed into objects
    assert set(read_split(tmp_path / "t.csv").columns) == set(df.columns) - {"captions", "kingdom"}
    full = read_split(tmp_path / "t.csv", columns=None, rows=[7, 2])
    assert list(full.columns) == list(df.columns) and full.index.tolist() == [2, 7]
    pd.testing.assert_frame_equal(full, df.iloc[[2, 7]], check_dtype=False)
