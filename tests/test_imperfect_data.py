"""Learning from imperfect data: partial labels (marginal loss, metrics, integrity) and unlabelled
images (TrainerCPS, select_unlabelled), unit-level and end to end through the CLI on tiny phantoms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import AutosegError
from autoseg.cli import main
from autoseg.datasets import RawDataset, check_integrity
from autoseg.io import Geometry, write_image
from autoseg.losses import DiceCELoss
from autoseg.plans import load_plans
from autoseg.trainers import find_trainer
from autoseg.trainers.synthetic_cache import synthetic_plans, write_synthetic_cache
from autoseg.utils import load_json, save_json

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (8, 8, 8))


def test_marginal_loss_does_not_train_unannotated_classes_as_background():
    torch.manual_seed(0)
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    target[..., :4] = 1  # class 1 annotated in half the patch; the rest is "background or class 2"
    logits = torch.full((1, 3, 8, 8, 8), -4.0)
    logits[:, 1, ..., :4] = 4.0
    logits[:, 2, ..., 4:] = 4.0  # predicts the unannotated class 2 where the labels say 0
    loss = DiceCELoss()
    annotated = torch.tensor([[True, True, False]])
    plain, marginal = loss(logits, target), loss(logits, target, annotated=annotated)
    assert plain > 1.0 and marginal < 0.05  # plain Dice+CE punishes class 2 as a background error
    # exclusion: class 2 inside the annotated class-1 voxels is certainly wrong
    wrong = logits.clone()
    wrong[:, 2, ..., :4] = 8.0
    assert loss(wrong, target, annotated=annotated) > marginal + 0.5
    full = torch.ones(1, 3, dtype=torch.bool)
    assert torch.allclose(loss(logits, target, annotated=full), plain)
    from autoseg.losses import pseudo_dice_counts
    assert pseudo_dice_counts(logits, target)[1][1] > 0  # class 2 "false positives" ...
    assert pseudo_dice_counts(logits, target, annotated=annotated)[1][1] == 0  # ... not counted when unannotated


def _tiny_dataset(root: Path, labelled_classes: dict | None = None) -> Path:
    folder = root / "Dataset950_Tiny"
    img = np.full((8, 8, 8), -1000, np.int16)
    img[2:6, 2:6, 2:6] = 40
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:4, 2:6, 2:6] = 1
    for cid in ("a", "b"):
        write_image(img, GEO, folder / "imagesTr" / f"{cid}_0000.nii.gz")
        write_image(lab, GEO, folder / "labelsTr" / f"{cid}.nii.gz")
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
          "numTraining": 2, "file_ending": ".nii.gz"}
    if labelled_classes is not None:
        dj["labelled_classes"] = labelled_classes
    save_json(dj, folder / "dataset.json")
    return folder


def test_integrity_check_names_bad_partial_labels_and_unlabelled_images(tmp_path):
    folder = _tiny_dataset(tmp_path, {"a": [1], "nobody": [1], "b": [1, 9]})
    problems = check_integrity(RawDataset.load(folder), 1)
    assert any("'nobody', which is not in imagesTr" in p for p in problems)
    assert any("case 'b' has label ids [9]" in p for p in problems)
    assert all("\n" not in p for p in problems) and len(problems) == 2
    save_json({**load_json(folder / "dataset.json"), "labelled_classes": {"a": [0]}}, folder / "dataset.json")
    assert any("'a' annotates no class" in p for p in check_integrity(RawDataset.load(folder), 1))
    save_json({**load_json(folder / "dataset.json"), "labelled_classes": {"a": "liver"}}, folder / "dataset.json")
    with pytest.raises(AutosegError, match="labelled_classes of case 'a' must be a list"):
        RawDataset.load(folder)
    save_json({**load_json(folder / "dataset.json"), "labelled_classes": {}}, folder / "dataset.json")
    unl = folder / "imagesUnlabeled"
    write_image(np.full((8, 8, 8), 100, np.uint8), GEO, unl / "mr_0000.nii.gz")  # no air: not CT
    write_image(np.zeros((8, 8, 8), np.int16) - 1000, GEO, unl / "two_0000.nii.gz")
    write_image(np.zeros((8, 8, 8), np.int16) - 1000, GEO, unl / "two_0001.nii.gz")  # a second channel
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(unl / "flat_0000.nii.gz"))
    problems = check_integrity(RawDataset.load(folder), 1)
    assert any("mr_0000.nii.gz: unlabelled image has no air" in p for p in problems)
    assert any("two: has 2 channel file(s)" in p for p in problems)
    assert any("flat_0000.nii.gz: 2D image" in p for p in problems)
    assert len(problems) == 3 and all("\n" not in p for p in problems)


def test_organ_stage_of_a_tumour_without_its_host_organ(tmp_path):
    """The tumour voxels of a case that annotates the tumour but not its host organ must agree with
    the organ around them (both 'background or an unannotated class'), not become certain background."""
    from autoseg.datasets import Case
    from autoseg.preprocessing.preprocessor import preprocess_case

    img = np.full((8, 8, 8), -1000, np.int16)
    img[1:7, 1:7, 1:7] = 60
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[1:4, 1:7, 1:7] = 2  # spleen annotated; the liver (1) is not, its tumour (3) is
    lab[5:7, 3:5, 3:5] = 3
    write_image(img, GEO, tmp_path / "c_0000.nii.gz")
    write_image(lab, GEO, tmp_path / "c.nii.gz")
    plans = {"labels": {"background": 0, "liver": 1, "spleen": 2, "liver_tumour": 3}, "tumour_labels": [3],
             "intensity": {"scheme": "ct", "clip": [-1000.0, 400.0], "mean": 0.0, "std": 100.0},
             "stages": {"organ": {"target_spacing": [1.0, 1.0, 1.0], "classes": [1, 2], "input": {"crop": "body"},
                                  "tumour_voxels_as_host": True}}}
    case = Case("c", [tmp_path / "c_0000.nii.gz"], tmp_path / "c.nii.gz", labelled_classes=[2, 3])
    preprocess_case(case, plans, tmp_path / "pre", device="cpu")
    meta = load_json(tmp_path / "pre" / "organ" / "c.json")
    with np.load(tmp_path / "pre" / "organ" / "c.npz") as z:
        seg = z["seg"][0]
    box = meta["crop_bbox"]
    tumour = lab[tuple(slice(a, b) for a, b in box)] == 3
    assert meta["annotated_classes"] == [2]  # liver (local 1) is merged into background by the loss
    assert (seg[tumour] == 0).all() and not (seg == -1).any() and (seg == 2).any()


def test_evaluate_never_scores_a_class_the_case_does_not_annotate(tmp_path, capsys):
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    pred = gt.copy()
    pred[5:7, 5:7, 5:7] = 2  # spleen predicted; case "p" does not annotate spleen
    for cid in ("p", "f"):
        write_image(gt, GEO, tmp_path / "labelsTr" / f"{cid}.nii.gz")
        write_image(pred, GEO, tmp_path / "pred" / f"{cid}.nii.gz")
    save_json({"labels": {"background": 0, "liver": 1, "spleen": 2}, "labelled_classes": {"p": [1]}},
              tmp_path / "dataset.json")
    assert main(["evaluate", "-g", str(tmp_path / "labelsTr"), "-p", str(tmp_path / "pred"), "-j", "1",
                 "--no-progress"]) == 0
    s = json.loads((tmp_path / "pred_evaluation" / "summary.json").read_text())
    assert s["per_class"]["spleen"]["dsc"]["n"] == 1 and s["per_class"]["spleen"]["dsc"]["mean"] == 0.0
    assert s["annotated_cases_per_class"] == {"liver": 2, "spleen": 1}
    assert s["num_partially_labelled_cases"] == 1
    rows = (tmp_path / "pred_evaluation" / "metrics.csv").read_text().splitlines()
    assert not any(r.startswith("p,2,") for r in rows) and any(r.startswith("f,2,") for r in rows)


def _cps_cache(root: Path) -> Path:
    folder = root / "Dataset901_Cps"
    plans = synthetic_plans(folder.name)
    write_synthetic_cache(folder, plans, num_cases=4, shape=(16, 24, 24))
    ids = write_synthetic_cache(folder / "unlabelled", plans, num_cases=2, shape=(16, 24, 24), seed=1)
    for cid in ids:
        meta = load_json(folder / "unlabelled" / "organ" / f"{cid}.json")
        save_json({**meta, "unlabelled": True, "class_locations": {}}, folder / "unlabelled" / "organ" / f"{cid}.json")
    (folder / "unlabelled" / "plans.json").unlink()
    return folder


class _Killed(Exception):
    pass


def test_cps_killed_mid_epoch_resumes_both_networks(tmp_path):
    folder = _cps_cache(tmp_path)
    plans = load_plans(folder / "plans.json")
    cls = find_trainer("TrainerCPS")

    class Dies(cls):
        def train_step(self, batch):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 3:  # first iteration of the second epoch
                raise _Killed()
            return super().train_step(batch)

    def make(c, out):
        t = c(plans, "organ", 0, folder, "cpu", out, num_epochs=2, iters_per_epoch=2, num_workers=0)
        t.final_validation = lambda: None
        return t

    ref = make(cls, tmp_path / "ref")
    ref.fit()
    assert set(ref.slots) == {"net_a", "net_b"} and ref.unlabelled_batch == 1 and ref.batch_size == 1
    a, b = ref.slots["net_a"].network.state_dict(), ref.slots["net_b"].network.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # initialised differently
    with pytest.raises(_Killed):
        make(Dies, tmp_path / "run").fit()
    resumed = make(cls, tmp_path / "run")
    resumed.fit(continue_training=True)
    assert resumed.progress.curves["train_loss"] == ref.progress.curves["train_loss"]
    for name in ("net_a", "net_b"):
        for k, x in ref.slots[name].network.state_dict().items():
            assert torch.equal(x, resumed.slots[name].network.state_dict()[k]), (name, k)
        assert ref.slots[name].optimizer.state_dict()["state"].keys() == \
            resumed.slots[name].optimizer.state_dict()["state"].keys()
    ckpt = torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["inference_network"] == "net_a" and set(ckpt["networks"]) == {"net_a", "net_b"}
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in ckpt["networks"]["net_a"]["weights"].items())


def test_both_regimes_end_to_end_from_the_cli(tmp_path, monkeypatch, capsys):
    """Partially labelled phantoms + imagesUnlabeled/: plan, TrainerFastCPS (CPS on partial labels),
    select_unlabelled, inference from the CPS checkpoint, and evaluate scoring annotated classes only."""
    for var, sub in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    assert main(["make_phantoms", "--id", "952", "--num-train", "3", "--num-test", "0", "--num-unlabelled", "1",
                 "--partial-organs", "3", "-np", "1", "--no-progress"]) == 0
    raw = tmp_path / "raw" / "Dataset952_Phantom"
    dj = json.loads((raw / "dataset.json").read_text())
    assert len(dj["labelled_classes"]) == 3 and len(list((raw / "imagesUnlabeled").iterdir())) == 1
    capsys.readouterr()
    assert main(["plan_and_preprocess", "-t", "952", "--planner", "CPUPlanner", "--stages", "organ",
                 "--target-spacing", "10", "10", "10", "-np", "1", "--no-progress"]) == 0
    assert "unlabelled images: 1 (crops from body)" in capsys.readouterr().out
    pre = tmp_path / "pre" / "Dataset952_Phantom"
    assert load_json(pre / "unlabelled" / "organ" / "Phantom_8000.json")["unlabelled"] is True
    assert main(["run_training", "organ", "TrainerFastCPS", "952", "0", "--epochs", "1", "--iters-per-epoch", "2",
                 "-nw", "0", "--device", "cpu"]) == 0
    out = tmp_path / "res" / "Dataset952_Phantom" / "organ" / "TrainerFastCPS" / "fold_0"
    summary = load_json(out / "validation" / "summary.json")
    val_case = next(iter(summary["per_case_mean"]))
    scored = sum(summary["annotated_cases_per_class"].values())
    assert scored == len([v for v in dj["labelled_classes"][val_case] if v <= 6])  # annotated organs only
    capsys.readouterr()  # a trained organ model now exists: unlabelled crops come from its prediction
    assert main(["plan_and_preprocess", "-t", "952", "-np", "1", "--no-progress", "--stages", "organ"]) == 0
    assert "unlabelled images: 1 (crops from model TrainerFastCPS)" in capsys.readouterr().out
    assert main(["select_unlabelled", "-t", "952", "-tr", "TrainerFastCPS", "-f", "0", "--keep", "1",
                 "--device", "cpu", "--no-progress"]) == 0
    sel = load_json(pre / "unlabelled_selection_organ.json")
    assert sel["selected"] == ["Phantom_8000"] and sel["scores"]["Phantom_8000"]["disagreement"] is not None
    assert main(["run_inference", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "pred"), "-t", "952",
                 "-tr", "TrainerFastCPS", "-f", "0", "--device", "cpu"]) == 0
    assert main(["evaluate", "-g", str(raw / "labelsTr"), "-p", str(tmp_path / "pred"), "-j", "1",
                 "--no-progress"]) == 0
    s = load_json(tmp_path / "pred_evaluation" / "summary.json")
    assert s["num_partially_labelled_cases"] == 3
    counts = {n: sum(1 for c in dj["labelled_classes"].values() if v in c) for n, v in dj["labels"].items() if v}
    assert s["annotated_cases_per_class"] == counts


def test_training_uses_only_the_selected_unlabelled_cases(tmp_path):
    from autoseg.trainers.select import select_unlabelled
    from autoseg.trainers.semi import selection_path, unlabelled_training_cases

    folder = _cps_cache(tmp_path)
    assert unlabelled_training_cases(folder, "organ") == ["case_000", "case_001"]
    save_json({"selected": ["case_001"]}, selection_path(folder, "organ"))
    assert unlabelled_training_cases(folder, "organ") == ["case_001"]
    assert unlabelled_training_cases(folder, "organ", use_selection=False) == ["case_000", "case_001"]
    with pytest.raises(AutosegError, match="no unlabelled cases"):
        unlabelled_training_cases(folder, "tumour")
    with pytest.raises(AutosegError, match="--keep must be a fraction"):
        select_unlabelled(str(folder), keep=0.0, preprocessed=tmp_path)
