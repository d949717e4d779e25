"""FungiCLEF submissions: the file test.py --submission writes is read and scored the way
FungiCLEF's evaluate.py (BohemianVRA/FGVC-Competitions, FungiCLEF2023) reads and scores it."""
import numpy as np
import pandas as pd
import pytest

from amanita.io import UserError
from amanita.submission import check_submission, read_test_metadata, submission_frame, write_submission

CATEGORY_IDS = [0, 1, 2, 3, 4, 5]


def fungiclef_evaluate(test_annotation_file, user_submission_file):
    """evaluate.py's evaluate_csv, its reading and checks as written there, and its Track 1
    classification error (mis-answers / observations) and macro-F1 (in %), without the poisonous
    list it downloads."""
    from sklearn.metrics import f1_score
    gt_df = pd.read_csv(test_annotation_file, sep=",")
    for col in ["observationID", "class_id"]:
        assert col in gt_df
    gt_df = gt_df.drop_duplicates("observationID")
    user_pred_df = pd.read_csv(user_submission_file, sep=",")
    for col in ["observationID", "class_id"]:
        if col not in user_pred_df:
            raise ValueError(f"File submitted by the user is missing column '{col}'.")
    if len(gt_df) != len(user_pred_df):
        raise ValueError(f"File submitted by the user should have {len(gt_df)} records.")
    if (~gt_df["observationID"].isin(user_pred_df["observationID"])).any():
        raise ValueError("File submitted by the user is missing observations")
    merged = pd.merge(gt_df, user_pred_df, how="outer", on="observationID", validate="one_to_one",
                      suffixes=("_gt", "_pred"))
    error = float((merged.class_id_gt != merged.class_id_pred).mean())
    f1 = 100 * f1_score(merged["class_id_gt"], merged["class_id_pred"], average="macro")
    return {"error": error, "f1": f1}


@pytest.fixture
def test_meta():
    """Seven images of four observations (one of a single image), FungiTastic test columns."""
    return pd.DataFrame({"observationID": [10, 10, 11, 12, 12, 12, 13],
                         "filename": [f"{i}-{o}.JPG" for i, o in enumerate([10, 10, 11, 12, 12, 12, 13])]})


def test_one_line_per_observation_with_category_ids_and_unknowns(test_meta, tmp_path):
    # per-observation answers as the pooled predictions give them (leaf indices), one not in order
    obs = pd.DataFrame({"observationID": [12, 10, 11, 13], "leaf_pred": [5, 0, 3, 1]})
    sub = submission_frame(obs, CATEGORY_IDS, test_meta, unknown=np.array([False, False, True, False]))
    assert sub.to_dict("list") == {"observationID": [10, 11, 12, 13], "class_id": [0, -1, 5, 1]}
    write_submission(tmp_path / "sub.csv", sub, test_meta, CATEGORY_IDS)
    assert (tmp_path / "sub.csv").read_text().splitlines() == ["observationID,class_id", "10,0", "11,-1", "12,5", "13,1"]
    # scored by evaluate.py's rules against ground truth (rows per image, as the metadata has them)
    gt = test_meta.assign(class_id=[0, 0, 4, 5, 5, 5, 1])
    gt.to_csv(tmp_path / "gt.csv", index=False)
    scores = fungiclef_evaluate(tmp_path / "gt.csv", tmp_path / "sub.csv")
    assert scores["error"] == pytest.approx(1 / 4)  # observation 11 answered unknown, truly 4
    # macro-F1 over the labels present in either column: 0, 1, 5 right; 4 and -1 score 0
    assert scores["f1"] == pytest.approx(100 * 3 / 5)


def test_observation_without_readable_image_is_answered_unknown(test_meta, capsys):
    obs = pd.DataFrame({"observationID": [10, 11, 12], "leaf_pred": [0, 1, 2]})
    sub = submission_frame(obs, CATEGORY_IDS, test_meta)
    assert sub["class_id"].tolist() == [0, 1, 2, -1]
    assert "1 observation(s) have no readable image" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.drop(columns="class_id"), "missing column"),
    (lambda s: s.iloc[:3], "3 rows, the test set 4 observations"),
    (lambda s: pd.concat([s.iloc[:3], s.iloc[:1]]), "appears twice"),
    (lambda s: s.assign(observationID=[10, 11, 12, 99]), "lacks observation"),
    (lambda s: s.assign(class_id=[0, 1, 2, 77]), "class_id 77"),
])
def test_files_evaluate_py_would_refuse_are_refused_and_not_written(test_meta, tmp_path, edit, message):
    good = pd.DataFrame({"observationID": [10, 11, 12, 13], "class_id": [0, 1, 2, 3]})
    check_submission(good, test_meta, CATEGORY_IDS)
    bad = edit(good).reset_index(drop=True)
    with pytest.raises(UserError, match=message):
        write_submission(tmp_path / "sub.csv", bad, test_meta, CATEGORY_IDS)
    assert not (tmp_path / "sub.csv").exists()


def test_test_csv_without_labels_is_read_and_one_without_observation_ids_refused(tmp_path, test_meta):
    test_meta.to_csv(tmp_path / "test.csv", index=False)
    df = read_test_metadata(tmp_path / "test.csv")
    assert df["category_id"].isna().all() and df["genus"].isna().all()
    test_meta.assign(observationID=[10, 10, None, 12, 12, 12, 13]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="row 4 has no observationID"):
        read_test_metadata(tmp_path / "bad.csv")
    test_meta.drop(columns="observationID").to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(UserError, match="missing column 'observationID'"):
        read_test_metadata(tmp_path / "none.csv")


@pytest.mark.slow
def test_script_writes_pooled_answers_that_evaluate_py_accepts(tmp_path):
    """test.py --submission on a tiny model: the file passes evaluate.py's checks, each answer is
    the argmax of the mean of the observation's image probabilities, and the stored unknown
    threshold turns exactly the observations above it into -1."""
    import torch

    from amanita.checkpoint import update_checkpoint
    from amanita.data import FungiTasticDataset, create_transforms, to_model_input
    from amanita.taxonomy import LEAF, build_taxonomy
    from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_in_process, tiny_checkpoint
    data = make_image_dataset(tmp_path, n_train=6, n_val=9)
    val = pd.read_csv(data["val"])
    test_csv = tmp_path / "metadata" / "FungiTastic" / "FungiTastic-Test.csv"
    val.assign(observationID=[1, 1, 1, 2, 3, 3, 4, 4, 5]).drop(columns=["category_id", "genus"]).to_csv(test_csv, index=False)
    tax = build_taxonomy([rows(TRAIN_IDS)])
    model, cfg = tiny_checkpoint(tmp_path / "m.pth", tax)
    # the expected answers, by hand: mean leaf probability per observation
    ds = FungiTasticDataset(data["val"], tax, create_transforms(cfg, False), input_size=cfg["input_size"])
    x = to_model_input(torch.stack([ds[i][0] for i in range(len(ds))]), torch.device("cpu"), cfg["mean"], cfg["std"])
    with torch.no_grad():
        p = model(x)[LEAF].softmax(1).numpy()
    groups = [[0, 1, 2], [3], [4, 5], [6, 7], [8]]
    pooled = np.stack([p[g].mean(0) for g in groups])
    want = np.asarray(tax.category_ids)[pooled.argmax(1)]
    common = ["--checkpoint", tmp_path / "m.pth", "--test-path", test_csv, "--decode", "independent", "--workers", 0,
              "--image-root", tmp_path / "FungiTastic" / "val" / "300p"]
    run_in_process("test.py", *common, "--submission", tmp_path / "sub.csv")
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub["observationID"].tolist() == [1, 2, 3, 4, 5] and sub["class_id"].tolist() == want.tolist()
    val.assign(observationID=[1, 1, 1, 2, 3, 3, 4, 4, 5], class_id=val["category_id"]).to_csv(tmp_path / "gt.csv", index=False)
    fungiclef_evaluate(tmp_path / "gt.csv", tmp_path / "sub.csv")  # raises on a format evaluate.py refuses
    msp = 1 - pooled.max(1)
    threshold = float(np.median(msp))
    update_checkpoint(tmp_path / "m.pth", open_set={"score": "msp", "threshold": threshold})
    run_in_process("test.py", *common, "--submission", tmp_path / "sub2.csv")
    sub2 = pd.read_csv(tmp_path / "sub2.csv")
    assert sub2["class_id"].tolist() == np.where(msp > threshold, -1, want).tolist()
    assert (sub2["class_id"] == -1).sum() == 2
    # no image found at all: one line naming the folder, exit 2, no file
    proc = run_in_process("test.py", *common[:-2], "--submission", tmp_path / "sub3.csv", check=False)
    assert proc.returncode == 2 and "no image of" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sub3.csv").exists()
