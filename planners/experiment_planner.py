"""ExperimentPlanner: from a dataset fingerprint to plans for the roi, organ and tumour stages.

Every decision is a small method a subclass can override, and each stage records in ``why`` the
reason for its spacing, patch, margins and batch size, so a user reading plans.json sees where a
number came from before editing it by hand.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from autoseg import AutosegError
from autoseg.plans import SCHEMA_VERSION, STAGES, validate_plans
from autoseg.planners.memory import GIB, estimate_training_bytes
from autoseg.planners.network_choice import choose_network
from autoseg.planners.topology import get_topology, total_stride
from autoseg.planners.window_steps import window_step

log = logging.getLogger(__name__)


def _r(v: list[float], nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in v]


class ExperimentPlanner:
    """Plans a ROI -> organ -> tumour cascade; subclass and override hooks to change one decision."""

    # organ stage: never finer than this (z, y, x) mm. FLARE winners ran organs at ~1.5-2.5 mm: the
    # accuracy lost on large organs is small and it makes whole-case GPU inference fast.
    organ_spacing_floor_mm: tuple[float, float, float] = (2.5, 1.6, 1.6)
    anisotropy_threshold = 3.0          # z / in-plane spacing above which a dataset is thick-slice
    features_start = {"roi": 16, "organ": 32, "tumour": 32}
    max_features = 320
    max_stages = {"roi": 5, "organ": 6, "tumour": 6}
    min_feature_map = 4
    roi_max_patch = (128, 128, 128)     # coarse whole-volume pass: median body crop in one patch
    initial_patch_voxels = {"roi": 128 ** 3, "organ": 256 ** 3, "tumour": 192 ** 3}
    tumour_min_voxels = 12              # median tumour should span at least this many voxels per axis
    min_batch_size = 2
    max_batch_size = 16
    max_batch_dataset_fraction = 0.05   # a batch never covers more than 5% of the stage's voxels
    memory_reserve_gb = 0.5             # CUDA context and fragmentation left outside the estimate
    deep_supervision = True
    amp = True
    # iterative saliency refinement (RSTN-like) for small organs of a multi-organ stage
    refine_small_organs = True
    refine_max_volume_mm3 = 30_000.0    # median volume below which an organ counts as small (30 ml)
    refine_organ_names = ("pancreas",)  # small for a coarse grid whatever its volume: thin and lobulated
    refine_min_organs = 3               # a stage with fewer organs gives a small one enough capacity
    refine_max_stages = 1               # each refinement stage costs rounds x a stage's inference
    refine_rounds = 5
    resenc_presets = True               # False: never choose the residual-encoder presets (planners/network_choice.py)

    def __init__(self, fingerprint: dict, gpu_memory_gb: float = 8.0,
                 target_spacing: list[float] | None = None, stages: list[str] | None = None):
        self.fp = fingerprint
        self.ds = fingerprint["dataset"]
        self.labels: dict[str, int] = {str(k): int(v) for k, v in fingerprint["labels"].items()}
        self.tumour_labels = sorted(int(t) for t in fingerprint.get("tumour_labels", []))
        self.gpu_memory_gb = float(gpu_memory_gb)
        self.target_spacing = [float(s) for s in target_spacing] if target_spacing else None
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise AutosegError(f"--target-spacing: need three positive numbers (z y x), got {target_spacing}")
        self.requested_stages = stages
        if stages:
            unknown = [s for s in stages if s not in STAGES]
            if unknown:
                raise AutosegError(f"--stages: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")

    # ---- dataset facts -------------------------------------------------------------------------------
    @property
    def cases(self) -> list[dict]:
        return self.fp.get("cases", [])

    def organ_labels(self) -> list[int]:
        return sorted(v for v in self.labels.values() if v != 0 and v not in self.tumour_labels)

    def present_tumour_labels(self) -> list[int]:
        return [t for t in self.tumour_labels if self.ds["labels"].get(str(t), {}).get("cases", 0) > 0]

    # ---- hooks ---------------------------------------------------------------------------------------
    def transpose(self) -> tuple[list[int], str]:
        return [0, 1, 2], "identity: arrays are (z, y, x) and CT's thick axis is z, which the anisotropic " \
                          "spacing, pooling and kernel rules handle without reordering axes"

    def intensity(self) -> dict:
        ch = str(next(iter(self.fp.get("channel_names", {"0": "CT"}).values()), "CT")).lower()
        inten = self.ds.get("intensity")
        if ch != "ct" or not inten:
            return {"scheme": "zscore", "mean": 0.0, "std": 1.0,
                    "why": f"channel '{ch}' is not CT: per-image z-score at run time"}
        lo, hi = inten["p00_5"], inten["p99_5"]
        if hi <= lo:
            hi = lo + 1.0
        return {"scheme": "ct", "clip": [float(lo), float(hi)], "mean": float(inten["mean_clipped"]),
                "std": float(max(inten["std_clipped"], 1e-3)),
                "why": "clip to the 0.5/99.5 percentiles of foreground HU over all training cases, then "
                       "z-score with the clipped foreground's mean and std"}

    def choose_stages(self) -> tuple[list[str], str]:
        organs = self.organ_labels()
        tumours = self.present_tumour_labels()
        stages, why = [], []
        if len(organs) > 1:
            stages.append("roi")
        else:
            why.append("roi skipped: a single organ label gains nothing from a separate foreground model")
        stages.append("organ")
        if tumours and organs:
            stages.append("tumour")
        elif not self.tumour_labels:
            why.append("no tumour stage: the dataset declares no tumour labels")
        elif not tumours:
            why.append("no tumour stage: no training case contains a tumour label")
        if self.requested_stages:
            bad = [s for s in self.requested_stages if s == "tumour" and "tumour" not in stages]
            if bad:
                raise AutosegError(f"--stages tumour: {self.fp.get('dataset_name', 'dataset')} has no tumour "
                                   "labels present in its training cases")
            stages = [s for s in STAGES if s in self.requested_stages]
            why.append(f"stages restricted by --stages to {stages}")
        return stages, "; ".join(why) or "roi, organ and tumour stages: several organs and tumour labels"

    def organ_spacing(self) -> tuple[list[float], str]:
        if self.target_spacing:
            return list(self.target_spacing), "given by --target-spacing"
        med = [float(v) for v in self.ds["spacing_median"]]
        floor = [float(v) for v in self.organ_spacing_floor_mm]
        thick = med[0] > self.anisotropy_threshold * max(med[1], med[2])
        sp = [max(m, f) for m, f in zip(med, floor)]
        why = (f"median spacing {_r(med)}, coarsened to at least organ_spacing_floor_mm {_r(floor)} for fast "
               "whole-case inference")
        if thick:
            why += (f"; thick-slice data (z {med[0]:.2f} > {self.anisotropy_threshold:g}x in-plane): z kept at the "
                    "median, never upsampled, anisotropic kernels handle it")
        return sp, why

    def roi_spacing(self, organ_sp: list[float]) -> tuple[list[float], str]:
        ext = [float(v) for v in self.ds["cropped_extent_mm_median"]]
        sp = [max(o, e / m) for o, e, m in zip(organ_sp, ext, self.roi_max_patch)]
        return sp, (f"coarse: the median body crop ({_r(ext, 0)} mm) fits in {list(self.roi_max_patch)} voxels, "
                    "never finer than the organ stage")

    def tumour_spacing(self, organ_sp: list[float]) -> tuple[list[float], str]:
        exts = [self.ds["tumour_component_extent_mm_median"].get(str(t)) for t in self.present_tumour_labels()]
        exts = [e for e in exts if e]
        med = [float(v) for v in self.ds["spacing_median"]]
        if not exts:
            return list(organ_sp), "no tumour size statistics: organ spacing"
        ext = np.min(np.array(exts), axis=0).tolist()
        want = [e / self.tumour_min_voxels for e in ext]
        sp = [max(min(o, w), m) for o, w, m in zip(organ_sp, want, med)]
        return sp, (f"median tumour extent {_r(ext, 1)} mm spans >= {self.tumour_min_voxels} voxels per axis "
                    f"where the data allow: min(organ spacing, extent/{self.tumour_min_voxels}), not finer than "
                    f"the median data spacing {_r(med)}")

    def roi_margin_mm(self, roi_sp: list[float]) -> tuple[list[float], str]:
        reach = self.ds.get("fg_reach_mm_p90", {})
        margin, picked = [], []
        for a in range(3):
            face = roi_sp[(a + 1) % 3] * roi_sp[(a + 2) % 3]
            ts = sorted(int(t) for t in reach)
            t = next((t for t in ts if t >= 4 * face), ts[-1] if ts else None)
            r = float(reach[str(t)][a]) if t is not None else 0.0
            picked.append(t)
            margin.append(max(2 * roi_sp[a], r) + roi_sp[a])
        return _r(margin, 1), (f"2 ROI voxels of boundary error or the 90th-percentile reach of thin label parts "
                               f"(cross-section < {picked} mm² per axis, which a coarse model may miss), whichever "
                               "is larger, plus one ROI voxel")

    def tumour_margin_mm(self, host: list[int], organ_sp: list[float]) -> tuple[list[float], str]:
        beyond = [0.0, 0.0, 0.0]
        for c in self.cases:
            boxes = c.get("label_bbox", {})
            hb = _union([boxes[str(h)] for h in host if str(h) in boxes])
            for t in self.present_tumour_labels():
                tb = boxes.get(str(t))
                if hb is None or tb is None:
                    continue
                for a in range(3):
                    out = max(hb[a][0] - tb[a][0], tb[a][1] - hb[a][1], 0) * c["spacing"][a]
                    beyond[a] = max(beyond[a], out)
        margin = [b + 2 * s for b, s in zip(beyond, organ_sp)]
        return _r(margin, 1), (f"tumours reach up to {_r(beyond, 1)} mm beyond their host-organ box in the "
                               "training cases, plus 2 organ-stage voxels for the organ model's boundary error")

    def host_organs(self) -> tuple[list[int], str]:
        hosts = sorted({h for t in self.present_tumour_labels() for h in self.ds["host_organs"].get(str(t), [])})
        if not hosts:
            return self.organ_labels(), "no organ touches the tumours in the training data: crop around all organs"
        return hosts, "organs touching or containing a tumour in >= 10% of the cases with that tumour"

    # ---- shapes, patch, batch ----------------------------------------------------------------------
    def median_shape(self, stage: str, spacing: list[float], margin: list[float] | None,
                     boxes_of: Any) -> list[int]:
        """Median crop shape (voxels at ``spacing``) of a stage; ``boxes_of(case)`` gives its bbox."""
        ext = []
        for c in self.cases:
            b = boxes_of(c)
            if b is None:
                continue
            ext.append([(hi - lo) * s + 2 * (margin[a] if margin else 0.0)
                        for a, ((lo, hi), s) in enumerate(zip(b, c["spacing"]))])
        if not ext:
            ext = [[float(e) for e in self.ds["cropped_extent_mm_median"]]]
        med = np.median(np.array(ext), axis=0)
        return [max(1, int(round(e / s))) for e, s in zip(med, spacing)]

    def choose_network(self, stage: str) -> tuple[dict, str]:
        """Network class (plus its extra keys) for ``stage`` and the reason; rules in planners/network_choice.py."""
        return choose_network(self, stage)

    def network(self, stage: str, spacing: list[float], patch: list[int]) -> tuple[dict, list[int]]:
        kind = stage if stage in self.features_start else "tumour"  # refinement: small fine crops, like tumours
        net, rounded = get_topology(spacing, patch, self.features_start[kind], self.max_features,
                                    self.max_stages[kind], self.min_feature_map)
        net.update(self.choose_network(stage)[0])
        return net, rounded

    def estimate_bytes(self, stage: str, net: dict, patch: list[int], batch: int) -> int:
        return estimate_training_bytes(net, patch, batch, 1, self.num_classes(stage),
                                       self.deep_supervision, self.amp)

    def budget_bytes(self) -> int:
        return int((self.gpu_memory_gb - self.memory_reserve_gb) * GIB)

    def initial_patch(self, stage: str, spacing: list[float], median: list[int]) -> list[int]:
        if stage == "roi":
            return [min(m, c) for m, c in zip(median, self.roi_max_patch)]
        aspect = [1.0 / s for s in spacing]
        scale = (self.initial_patch_voxels.get(stage, self.initial_patch_voxels["tumour"]) / math.prod(aspect)) ** (1 / 3)
        return [max(1, min(int(round(a * scale)), m)) for a, m in zip(aspect, median)]

    def fit_patch(self, stage: str, spacing: list[float], median: list[int]) -> tuple[list[int], dict]:
        """Largest patch (shrinking the axis most over the median shape first) whose training step at
        ``min_batch_size`` fits the memory budget."""
        patch = self.initial_patch(stage, spacing, median)
        while True:
            net, rounded = self.network(stage, spacing, patch)
            if self.estimate_bytes(stage, net, rounded, self.min_batch_size) <= self.budget_bytes():
                return rounded, net
            stride = total_stride(net["strides"])
            ratios = [p / m for p, m in zip(rounded, median)]
            order = sorted(range(3), key=lambda a: -ratios[a])
            a = next((a for a in order if rounded[a] - stride[a] >= max(stride[a], 4)), None)
            if a is None:
                raise AutosegError(f"--gpu-memory-gb {self.gpu_memory_gb:g}: too small for even a {rounded} patch "
                                   f"of the {stage} network")
            patch = list(rounded)
            patch[a] = rounded[a] - stride[a]

    def batch_size(self, stage: str, net: dict, patch: list[int], median: list[int]) -> tuple[int, str]:
        per = self.estimate_bytes(stage, net, patch, 1) - self.estimate_bytes(stage, net, patch, 0)
        fixed = self.estimate_bytes(stage, net, patch, 0)
        by_memory = max(1, (self.budget_bytes() - fixed) // max(1, per))
        total = max(1, len(self.cases)) * math.prod(median)
        by_data = int(self.max_batch_dataset_fraction * total / math.prod(patch))
        bs = int(max(self.min_batch_size, min(by_memory, by_data, self.max_batch_size)))
        return bs, (f"{bs}: as many patches as fit the memory budget ({by_memory}), at most "
                    f"{self.max_batch_dataset_fraction:.0%} of the stage's training voxels ({by_data}), "
                    f"clamped to [{self.min_batch_size}, {self.max_batch_size}]")

    def num_classes(self, stage: str) -> int:
        classes = self.stage_classes(stage)
        return 2 if classes == "foreground" else 1 + len(classes)

    def stage_classes(self, stage: str) -> str | list[int]:
        if stage == "roi":
            return "foreground"
        if stage == "tumour":
            return self.present_tumour_labels()
        return self.organ_labels() or self.tumour_labels

    # ---- assembling ----------------------------------------------------------------------------------
    def plan_stage(self, stage: str, spacing: list[float], median: list[int], why: dict) -> dict:
        patch, net = self.fit_patch(stage, spacing, median)
        bs, why_bs = self.batch_size(stage, net, patch, median)
        step, why_step = self.step_size(stage)
        est = self.estimate_bytes(stage, net, patch, bs) / GIB
        why = dict(why, patch_size=(f"median {stage} crop is {median} voxels; patch {patch} is the largest whose "
                                    f"training step fits --gpu-memory-gb {self.gpu_memory_gb:g} (estimate "
                                    f"{est:.2f} GiB), divisible by the total stride {total_stride(net['strides'])}"),
                   batch_size=why_bs, network=self.choose_network(stage)[1], step_size=why_step)
        return {"target_spacing": _r(spacing, 4), "patch_size": patch, "batch_size": bs, "step_size": step,
                "classes": self.stage_classes(stage), "network": net, "median_shape": median,
                "estimated_memory_gb": round(est, 3), "why": why}

    def step_size(self, stage: str) -> tuple[float, str]:
        """Sliding-window step at inference, as a fraction of the patch, and why (measured per stage)."""
        return window_step(stage)

    def plan(self) -> dict:
        stages, why_stages = self.choose_stages()
        organ_sp, why_organ = self.organ_spacing()
        out: dict[str, dict] = {}
        roi_margin, why_roi_margin = None, ""
        if "roi" in stages:
            sp, why_sp = self.roi_spacing(organ_sp)
            roi_margin, why_roi_margin = self.roi_margin_mm(sp)
            med = self.median_shape("roi", sp, None, lambda c: c.get("body_bbox"))
            out["roi"] = self.plan_stage("roi", sp, med, {"target_spacing": why_sp})
            out["roi"]["input"] = {"crop": "body"}
        if "organ" in stages:
            box = (lambda c: c.get("fg_bbox")) if roi_margin else (lambda c: c.get("body_bbox"))
            med = self.median_shape("organ", organ_sp, roi_margin, box)
            out["organ"] = self.plan_stage("organ", organ_sp, med, {"target_spacing": why_organ})
            out["organ"]["input"] = {"crop": "roi", "margin_mm": roi_margin} if roi_margin else {"crop": "body"}
            out["organ"]["why"]["input"] = (f"the roi stage's foreground box plus a margin: {why_roi_margin}"
                                            if roi_margin else "the body-cropped volume (no roi stage)")
            if self.tumour_labels and self.organ_labels():
                out["organ"]["tumour_voxels_as_host"] = True
                out["organ"]["why"]["tumour_voxels_as_host"] = ("tumour voxels are trained as their host organ, "
                                                                "so organ masks have no holes; tumours override "
                                                                "organs when the stages are fused")
        if "tumour" in stages:
            host, why_host = self.host_organs()
            sp, why_sp = self.tumour_spacing(organ_sp)
            margin, why_m = self.tumour_margin_mm(host, organ_sp)
            med = self.median_shape("tumour", sp, margin,
                                    lambda c: _union([c.get("label_bbox", {}).get(str(h)) for h in host]))
            out["tumour"] = self.plan_stage("tumour", sp, med, {"target_spacing": why_sp,
                                                                "input": f"host organs: {why_host}; margin: {why_m}"})
            src = "organ" if "organ" in out else "body"
            out["tumour"]["input"] = {"crop": src, "labels": host, "margin_mm": margin} if src != "body" \
                else {"crop": "body"}
        if "organ" in out:
            out.update(self.plan_refinement(organ_sp, out["organ"]))
        return self.assemble(out, why_stages)

    def small_organs(self, organ_classes: list[int]) -> tuple[list[int], str]:
        """Organs to refine (pancreas by name first, then the smallest by median volume) and why."""
        names = {v: k for k, v in self.labels.items()}
        vols = {v: float(self.ds.get("labels", {}).get(str(v), {}).get("volume_mm3_median", 0.0)) for v in organ_classes}
        named = [v for v in organ_classes if any(n in names[v].lower() for n in self.refine_organ_names)]
        small = sorted((v for v in organ_classes if 0 < vols[v] < self.refine_max_volume_mm3 and v not in named),
                       key=lambda v: vols[v])
        chosen = (named + small)[: self.refine_max_stages]
        why = (f"organs named {list(self.refine_organ_names)} or with a median volume below refine_max_volume_mm3 "
               f"{self.refine_max_volume_mm3:g} mm3 (median volumes: "
               f"{ {names[v]: round(vols[v]) for v in organ_classes} }), at most refine_max_stages "
               f"{self.refine_max_stages}")
        return chosen, why

    def plan_refinement(self, organ_sp: list[float], organ: dict) -> dict:
        """One refinement stage per small organ: CT crop around the organ stage's prediction of it plus
        that prediction as a saliency channel, iterated until two rounds agree (RSTN)."""
        classes = organ["classes"] if isinstance(organ["classes"], list) else []
        if not self.refine_small_organs or len(classes) < self.refine_min_organs:
            return {}
        chosen, why = self.small_organs(classes)
        med_sp = [float(v) for v in self.ds["spacing_median"]]
        out = {}
        for v in chosen:
            name = "refine_" + "".join(ch if ch.isalnum() else "_" for ch in self.label_name(v).lower())
            sp = [max(m, o / 1.6) for m, o in zip(med_sp, organ_sp)]
            margin = _r([3 * o for o in organ_sp], 1)
            med = self.median_shape(name, sp, margin, lambda c, v=v: c.get("label_bbox", {}).get(str(v)))
            st = self.plan_stage(name, sp, med, {
                "target_spacing": "1.6x finer than the organ stage, not finer than the median data spacing",
                "input": f"small organ: {why}; crop: the organ stage's prediction of it plus 3 organ-stage voxels "
                         "(its boundary error); saliency: that prediction",
                "refine": f"iterate until two rounds agree (DSC >= 0.99) or {self.refine_rounds} rounds (RSTN)"})
            st.update(classes=[v], input={"crop": "organ", "labels": [v], "margin_mm": margin,
                                          "saliency": {"stage": "organ", "classes": [v]}},
                      refine={"max_rounds": self.refine_rounds, "stop_dsc": 0.99})
            out[name] = st
        return out

    def label_name(self, value: int) -> str:
        return next((k for k, v in self.labels.items() if v == value), f"label_{value}")

    def assemble(self, stages: dict, why_stages: str) -> dict:
        tr, why_tr = self.transpose()
        inten = self.intensity()
        why_int = inten.pop("why")
        plans = {"schema_version": SCHEMA_VERSION, "dataset_name": self.fp.get("dataset_name", "dataset"),
                 "planner": type(self).__name__, "labels": dict(self.labels),
                 "tumour_labels": list(self.tumour_labels), "intensity": inten, "transpose": tr,
                 "gpu_memory_gb": self.gpu_memory_gb, "stages": stages,
                 "fingerprint_summary": {k: self.ds[k] for k in ("num_cases", "spacing_median", "shape_median",
                                                                 "cropped_shape_median") if k in self.ds},
                 "why": {"stages": why_stages, "transpose": why_tr, "intensity": why_int}}
        return validate_plans(plans, f"plans from {type(self).__name__}")


def _union(boxes: list) -> list[list[int]] | None:
    boxes = [b for b in boxes if b]
    if not boxes:
        return None
    return [[min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)] for a in range(3)]
