"""``--quality``: are the faster predictor's masks as good? Each model runs in both predictors.

Two tools trained separately differ in accuracy for reasons that are not their predictors' (recipe,
augmentation, sampling, luck), and a model also fits the preprocessing it was trained with. So each
tool trains one model with the same short recipe (AdamW 3e-3, poly, half the patches on foreground:
autoseg's ``TrainerFast``, and ``nnUNetTrainerAutosegBenchFast`` for nnU-Net), each model is
converted into the other tool's checkpoint format (``peer/shared_weights.py``, which checks that the
two networks then compute the same logits), and every model predicts the test cases through both
predictors. Per model, the DSC difference between the predictors is the predictors' own; across the
two models, neither predictor is favoured by having trained the weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks import harness, inputs
from benchmarks.report import OURS, THEIRS, Row
from benchmarks.rows import WeightSet, rows
from benchmarks.stages import Bench


BODY_METRIC = "organ_dsc_body_crop"


class QualityBench(Bench):
    title = "autoseg vs nnU-Net v2.8.1, side by side, trained models in both predictors"

    def weight_sets(self) -> list[WeightSet]:
        n = self.s.quality_epochs * self.s.quality_iters
        return [
            WeightSet(", autoseg-trained model", "_autoseg_model", harness.OUR_QUALITY_TRAINER,
                      harness.THEIR_QUALITY_TRAINER, harness.SHARED_CHECKPOINT,
                      f"autoseg's model ({n} iterations) in both predictors"),
            WeightSet(", nnU-Net-trained model", "_nnunet_model", harness.FROM_NNUNET,
                      harness.THEIR_QUALITY_TRAINER, None, f"nnU-Net's model ({n} iterations) in both predictors"),
        ]

    def report_rows(self) -> list:
        out = rows(self.s.quick, self.s.their_default_tta, self.weight_sets(), preprocess=False)
        for ws in self.weight_sets():
            out.append(Row(f"infer, TTA off{ws.suffix}", BODY_METRIC,
                           "mean organ DSC, nnU-Net given autoseg's body crop (control)", "", better="higher",
                           digits=3, reading="ours: its normal run (it crops to the body itself)"))
        return out

    # ----- the two models ------------------------------------------------------------------------------
    def stage_train(self, record: bool) -> None:
        self.train_models(retrain=record)
        super().stage_train(record)

    def train_models(self, retrain: bool) -> None:
        """One model per tool with the same recipe and amount of work (untimed setup; logs are kept)."""
        s = self.s
        runs = ((self.ours, self._checkpoint(OURS, harness.OUR_QUALITY_TRAINER),
                 self.ours.train(s.quality_iters, s.quality_epochs, harness.OUR_QUALITY_TRAINER), None),
                (self.theirs, self._checkpoint(THEIRS, harness.THEIR_QUALITY_TRAINER),
                 self.theirs.train(harness.THEIR_QUALITY_TRAINER),
                 self.theirs.quality_env(s.quality_epochs, s.quality_iters)))
        minutes = {}
        for tool, ckpt, cmd, env in runs:
            if retrain or not ckpt.is_file():
                shutil.rmtree(ckpt.parent, ignore_errors=True)
                m = self.measure(tool, cmd, f"train_model_{tool.name}", env)
                if m is None:
                    raise SystemExit(f"training the --quality model ({tool.name}) failed; see the log above")
                minutes[tool.name] = f", {m.wall_s / 60:.1f} min"
        self.report.setup.append(
            f"the two models: autoseg `{harness.OUR_QUALITY_TRAINER}`{minutes.get(OURS, '')} and nnU-Net "
            f"`{harness.THEIR_QUALITY_TRAINER}`{minutes.get(THEIRS, '')} (`benchmarks/ours`, `benchmarks/peer/"
            f"trainers`), the same recipe on both sides: AdamW 3e-3, weight decay 1e-4, poly decay, half the patches "
            f"centred on foreground, {s.quality_epochs} epochs x {s.quality_iters} iterations on the {s.n_train} "
            f"training cases, each tool's own preprocessing, augmentation, loss and precision; nnU-Net's transposed "
            f"convolutions train without bias (autoseg's have none), so its weights convert exactly")

    # ----- each model in the other tool's format ------------------------------------------------------------
    def prepare_inference(self) -> bool:
        plans = self._pre_dir(THEIRS) / f"{harness.BENCH_PLANS}.json"
        our_model = self._checkpoint(OURS, harness.OUR_QUALITY_TRAINER)
        their_model = self._checkpoint(THEIRS, harness.THEIR_QUALITY_TRAINER)
        conversions = (
            ("to_nnunet", self.theirs.shared_weights(
                our_model, their_model, plans, self._checkpoint(THEIRS, harness.THEIR_QUALITY_TRAINER,
                                                                harness.SHARED_CHECKPOINT))),
            ("to_autoseg", self.theirs.shared_weights(
                their_model, our_model, plans, self._checkpoint(OURS, harness.FROM_NNUNET), reverse=True)))
        diffs = []
        for tag, cmd in conversions:
            m = self.measure(self.theirs, cmd, f"convert_{tag}")
            if m is None:
                return False
            found = harness.markers(Path(m.log_path).read_text(errors="replace")).get("shared_weights_max_abs_diff")
            diffs.append(f"{found[-1]:.1e}" if found else "?")
        self.report.setup.append(
            f"conversions: `benchmarks/peer/shared_weights.py` (autoseg -> nnU-Net `-chk {harness.SHARED_CHECKPOINT}`; "
            f"nnU-Net -> autoseg `-tr {harness.FROM_NNUNET}`); nnU-Net's conv biases, which autoseg lacks, are "
            f"zero or dropped (instance norm right after removes them); on one random patch in fp32 the two "
            f"networks' logits differ by at most {diffs[0]} (autoseg's model) and {diffs[1]} (nnU-Net's model)")
        return True

    def stage_infer(self) -> None:
        super().stage_infer()
        inputs.body_cropped_copy(self.work.infer_images, self.work.infer_labels, self.work.body_images,
                                 self.work.body_labels)
        for ws in self.weight_sets():
            self.body_crop_control(ws)
        self.report.setup.append(
            "control: the inference images and labels cropped (geometry kept, by the harness) to the box that "
            "autoseg's predictor crops to before its sliding window (`crop_to_body`: the largest region above "
            "the body threshold), then predicted by nnU-Net with TTA off and scored on the cropped labels")
        for ws in self.weight_sets():
            line = per_class_line(self.work.predictions(OURS, "notta" + ws.tag, 0) / "evaluation",
                                  self.work.predictions(THEIRS, "notta" + ws.tag, 0) / "evaluation")
            if line:
                self.report.notes.append(f"per class, TTA off{ws.suffix}: {line}")

    def body_crop_control(self, ws: WeightSet) -> None:
        """nnU-Net once more, TTA off, on the images cropped to autoseg's body box: what is left of the
        DSC difference is the predictors' arithmetic (resampling, normalisation, windows, precision);
        the rest was the crop, which nnU-Net's own crop to non-zero voxels does not do for CT (air is -1000)."""
        stage = f"infer, TTA off{ws.suffix}"
        for smp in [x for x in self.report.samples if x.stage == stage and x.tool == OURS and x.metric == "organ_dsc"]:
            self.report.add(stage, BODY_METRIC, OURS, smp.value, smp.repeat)
        out = self.work.predictions(THEIRS, "body" + ws.tag, 0)
        shutil.rmtree(out, ignore_errors=True)
        cmd = self.theirs.predict(out, False, ws.their_checkpoint, ws.their_trainer, images=self.work.body_images)
        if self.measure(self.theirs, cmd, f"infer_body{ws.tag}_theirs") is not None:
            self.report.add(stage, BODY_METRIC, THEIRS, self._dsc(out, self.work.body_labels)[1])

    def inference_models_text(self) -> str:
        return "each of the two models above through both predictors"


def per_class_line(ours_eval: Path, theirs_eval: Path) -> str | None:
    """Mean DSC and HD95 per class of both predictors (first repeat), from ``autoseg evaluate``'s summaries:
    where the predictors differ, class by class (a far-away false positive shows in HD95, not in DSC)."""
    try:
        a, b = (json.loads((d / "summary.json").read_text())["per_class"] for d in (ours_eval, theirs_eval))
    except (OSError, KeyError, ValueError):
        return None

    def fmt(c: dict, key: str, digits: int) -> str:
        v = c.get(key, {}).get("mean")
        return "–" if v is None else f"{v:.{digits}f}"

    parts = [f"{name} DSC {fmt(a[name], 'dsc', 3)} / {fmt(b[name], 'dsc', 3)}, HD95 {fmt(a[name], 'hd95', 1)} / "
             f"{fmt(b[name], 'hd95', 1)} mm" for name in a if name in b]
    return "ours / nnU-Net: " + "; ".join(parts)
