"""The fused cascade predictor: the plans' stage graph (by default roi -> organ -> tumour) walked in
dependency order, everything on one device, one upload.

Geometry is handled by never leaving index space: the CT is cropped and resampled as a (z, y, x)
array with its spacing, predictions are pasted back into an array of the input's exact shape, and
the writer reuses the input's ``Geometry``. Any orientation (RAS, LPS, flipped, oblique) is
therefore exact by construction.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.devices import cpu_bf16_supported, resolve_device
from autoseg.preprocessing.crop import BBox, bbox_shape, bbox_with_margin, union_bbox
from autoseg.inference.boxes import device_bbox, main_components_bbox
from autoseg.preprocessing.normalize import normalize
from autoseg.preprocessing.resample import compute_new_shape, needs_anisotropic, resample_image
from autoseg.inference.compiled import apply_engines
from autoseg.inference.fused_resample import SlabArgmaxResampler
from autoseg.inference.models import (StageModel, cast_conv_weights, find_stage_checkpoints, load_stage_model,
                                      resolve_dataset_dir)
from autoseg.provenance import check_stage_origins
from autoseg.inference.postprocessing import apply_postprocessing
from autoseg.inference.profiling import CaseProfile
from autoseg.inference.refinement import refine_stage
from autoseg.inference.scope import in_scope
from autoseg.inference.sliding_window import autocast_dtype, iter_sliding_window, predict_sliding_window
from autoseg.inference.prepared import PreparedCase, host_array, prepare_case
from autoseg.inference.window_mask import WindowScope
from autoseg.stage_graph import BODY, crop_labels, dependencies, is_localiser, stage_input
from autoseg.nnunet.predict import logits_resampler, model_frame, nnunet_gaussian, original_frame
from autoseg.nnunet.preprocessing import nnunet_block, nonzero_box, prepare as nnunet_prepare

log = logging.getLogger(__name__)


def _use_amp(device: torch.device, precision: str) -> bool:
    """fp16 autocast on CUDA; on CPU bf16 autocast where the CPU computes bf16 natively (AVX512-BF16 or
    AMX: about 1.5x faster there), else fp32. ``precision`` = auto | fp32 | fp16 | bf16."""
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise AutosegError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return True
    if precision == "bf16":
        return True
    if precision == "fp16":
        raise AutosegError("fp16 inference needs CUDA; on CPU use bf16 or fp32")
    return cpu_bf16_supported()


def _slices(box: BBox) -> tuple[slice, slice, slice]:
    return tuple(slice(lo, hi) for lo, hi in box)


def _shift(box: BBox, origin: Sequence[int], sign: int) -> BBox:
    """A box moved by ``sign * origin`` (into or out of a region that starts at ``origin``)."""
    return [[lo + sign * o, hi + sign * o] for (lo, hi), o in zip(box, origin)]


def _fuse(region: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], fresh: bool, clear: bool) -> None:
    """Write a stage's labels into the fused map: the first stage fills its box; a later one overrides
    where it predicts a class and, if earlier stages produced its classes (a refinement), clears those
    voxels it now calls background."""
    if fresh:
        region.copy_(labels)
        return
    hit = labels > 0
    if clear:
        region[torch.isin(region, torch.tensor(list(classes), dtype=region.dtype, device=region.device)) & ~hit] = 0
    region[hit] = labels[hit]


class CascadePredictor:
    """Runs the stages it is given on arrays, files or folders, in the order of their plans' graph.

    ``models``: ``{stage: [checkpoint per fold]}`` (or ready ``StageModel``s). One stage that predicts
    labels is required: without a localiser (``roi``; or with ``cascade=False``) the stages cropped from
    it see the whole body-cropped volume; a stage cropped from a missing stage falls back to that
    stage's own source. Every stage must come from one dataset
    with one set of labels, and from ``dataset`` (the ``-t`` of ``from_results``) when given.
    """

    roi_min_component_fraction = 0.1  # roi components kept besides the largest (a separate kidney)
    # A stage cropped from predicted labels (tumour, refinement) ignores islands of its host label below
    # this fraction of the label's largest component: training crops come from the ground truth, and one
    # stray false-positive voxel cluster stretched the refinement crop over the body (benchmarks/
    # RESULTS_refinement.md); 0 keeps every voxel.
    crop_min_component_fraction = 0.1
    roi_single_pass_factor = 2.0  # whole-volume roi pass if at most this many patches' voxels
    single_pass_factor = 0.0  # the same for the labelling stages (0: always windows of the patch size)
    budget_bytes = 96 << 20  # in-flight upsampled logits in the fused resampler
    skip_air_windows = True  # CT: windows holding no body voxel are not computed (predicted background)
    overlap_io = True  # predict_folder: read + prepare the next case and write the last one in threads

    def __init__(self, models: dict, device: str | torch.device = "auto", step_size: float | None = None,
                 tta: bool = False, cascade: bool = True, windows_per_batch: int | None = None,
                 postprocess: bool = True, save_probabilities: bool = False, num_threads: int | None = None,
                 precision: str = "auto", dataset: str | None = None, engine: str = "eager"):
        self.device = resolve_device(device)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.amp = _use_amp(self.device, precision)
        # Checkpoints we load get their conv weights stored in the autocast dtype (half the memory, same
        # logits); ready StageModels are the caller's and are left as they are. On the CPU that waits
        # until the engines are chosen: they export the float32 weights.
        conv_dtype = autocast_dtype(self.device, self.amp)
        self.stages: dict[str, StageModel] = {
            s: m if isinstance(m, StageModel) else
            load_stage_model(s, m, self.device, conv_dtype if self.device.type == "cuda" else None)
            for s, m in models.items()}
        loaded = [s for s, m in models.items() if not isinstance(m, StageModel)]
        self.order = self._stage_order()
        self.labellers = [s for s in self.order if not is_localiser(self.stages[s].plans, s)]
        if not self.labellers:
            raise AutosegError(f"no stage that predicts labels among the stages found ({', '.join(self.stages) or 'none'})")
        # an imported nnU-Net model: its own preprocessing and frame (one labelling stage)
        self.nnunet = nnunet_block(self.stages[self.labellers[0]].config)
        check_stage_origins({s: (sm.plans, sm.checkpoints[0] if sm.checkpoints else s)
                             for s, sm in self.stages.items()}, dataset)
        # Localiser stages (classes 'foreground': roi) only give boxes; --no-cascade skips them.
        self.use_roi = cascade and len(self.labellers) < len(self.order)
        if cascade and not self.use_roi:
            log.info("no localiser (roi) model: stages cropped from it run on the whole body-cropped volume")
        if step_size is not None and not 0 < step_size <= 1:
            raise AutosegError(f"step size must be in (0, 1], got {step_size}")
        self.step_size = step_size  # None: each stage's plans say (0.5 where they do not)
        self.tta = tta
        self.postprocess = postprocess
        self.save_probabilities = save_probabilities
        if self.device.type == "cuda":
            # patch shapes repeat window after window: let cuDNN pick its fastest 3D convolutions once
            torch.backends.cudnn.benchmark = True
        # One window per forward pass: on an H100 with the default plans two windows per pass saved 15%
        # of the time but cost 1.7x the GPU memory (0.42 s / 3.3 GB vs 0.49 s / 1.9 GB, measured before
        # the networks freed maps as they go; unverified: no results file records that run, rerun
        # benchmarks/device_check.sh); on CPU batching gains nothing on two cores.
        if windows_per_batch is not None and windows_per_batch < 1:
            raise AutosegError(f"windows per batch must be at least 1, got {windows_per_batch}")
        self.windows_per_batch = windows_per_batch or 1
        # CPU: each stage's network behind the compiled engine measured fastest (inference/compiled.py)
        self.engines = apply_engines(self.stages, engine, self.device, self.amp, self.windows_per_batch)
        for s in loaded:
            if conv_dtype is not None and self.device.type == "cpu" and self.engines[s]["engine"] == "eager":
                cast_conv_weights(self.stages[s].network, conv_dtype)
        self.lean = False  # switched on for good after a CUDA out-of-memory error
        self.scope = WindowScope()  # the current case's body mask and window counts
        self.profiles: dict[str, dict] = {}
        self.written: list[str] = []
        self.label_names: dict[str, int] = self.stages["organ"].plans["labels"]
        self.rules: dict = {}
        for s in self.labellers:
            self.rules.update(self.stages[s].rules.get("rules", {}))
        out_labels = [v for s in self.labellers for v in self.stages[s].classes]
        self.label_dtype = torch.uint8 if max(out_labels, default=0) < 256 else torch.int16

    @classmethod
    def from_results(cls, task: str | int, trainer: str = "Trainer", stage_trainers: dict | None = None,
                     folds: Sequence[int | str] | None = None, results: str | None = None,
                     plans_name: str | None = None, **kwargs) -> "CascadePredictor":
        """Load every stage found under ``AUTOSEG_RESULTS/<Dataset>/[plans_NAME/]<stage>/<trainer>/fold_*``."""
        from autoseg.evaluation.crossval import config_name
        from autoseg.inference.rule_sources import choose_rules

        ckpts = find_stage_checkpoints(task, trainer, stage_trainers, folds, results, plans_name)
        for stage, paths in ckpts.items():
            log.info("stage %s: %d fold(s) from %s", stage, len(paths), paths[0].parent.parent)
        dataset_dir = resolve_dataset_dir(task, results)
        predictor = cls(ckpts, dataset=dataset_dir.name, **kwargs)
        predictor.rules = choose_rules(dataset_dir, config_name(trainer, stage_trainers), predictor.rules,
                                       [p for s, ps in ckpts.items()
                                        if not is_localiser(predictor.stages[s].plans, s) for p in ps])
        return predictor

    # ------------------------------------------------------------------ array path
    def predict_array(self, image: np.ndarray, spacing: Sequence[float],
                      profile: CaseProfile | None = None, name: str = "image") -> np.ndarray:
        """Labels (z, y, x) of a CT array (z, y, x) in HU with spacing (z, y, x) in mm."""
        return self.predict_array_full(image, spacing, profile, name)[0]

    def prepare(self, image: np.ndarray) -> PreparedCase | None:
        """The model-independent preprocessing of a raw (z, y, x) array, safe in a reader thread; None for
        an imported nnU-Net model (it works in its own frame)."""
        if self.nnunet is not None:
            return None
        return prepare_case(image, self._intensity(), self._skips_windows())

    def predict_array_full(self, image: np.ndarray, spacing: Sequence[float],
                           profile: CaseProfile | None = None, name: str = "image",
                           prepared: PreparedCase | None = None) -> tuple[np.ndarray, dict]:
        """Labels plus, with ``save_probabilities``, each stage's probabilities inside its crop.
        ``name`` (the case) is what out-of-scope warnings name; ``prepared``: ``self.prepare(image)``."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise AutosegError(f"expected a 3D (z, y, x) image, got shape {image.shape}")
        spacing = [float(s) for s in spacing]
        if not in_scope(image, spacing, name, self.stages[self.labellers[0]]):
            return np.zeros(image.shape, np.uint8 if self.label_dtype == torch.uint8 else np.int16), {}
        if self.nnunet is not None:
            image, spacing = model_frame(image, spacing, self.nnunet)
        prof = profile or CaseProfile(self.device, enabled=False)
        probs: dict = {}
        with torch.inference_mode():
            with prof.stage("roi"):  # upload, body crop and every localiser stage
                if self.nnunet is not None:
                    vol, body, self.scope = self._upload(image), nonzero_box(image), WindowScope()
                else:
                    prepared = prepared or self.prepare(image)
                    vol = torch.from_numpy(prepared.host).to(self.device)
                    body, self.scope = prepared.body, prepared.scope
                found = {s: self._localise(self.stages[s], vol, spacing, body)
                         for s in self.order if s not in self.labellers and self.use_roi}
                base = {s: self._base_box(s, found, body, spacing, image.shape) for s in self.labellers}
                boxes = [b for b in base.values() if b is not None]
                box = [[min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)] for a in range(3)]
                # From here on everything lives in the region the later stages can read (the base boxes
                # grown by the margins of stages cropped from predicted labels): the rest leaves the device.
                region = self._work_region(box, spacing, image.shape)
                vol = self._crop_volume(vol, region)
            origin = [lo for lo, _ in region]
            self.scope.origin = origin
            out = torch.zeros(bbox_shape(region), dtype=self.label_dtype, device=self.device)
            produced: set[int] = set()
            for s in self.labellers:
                with prof.stage(s):
                    sm = self.stages[s]
                    sbox = _shift(base[s], origin, -1) if base[s] is not None else self._label_box(s, out, spacing)
                    if sbox is None:
                        log.info("stage %s: nothing to crop from its source's prediction, skipped", s)
                        continue
                    sal = stage_input(sm.plans, s).saliency_stage
                    if sal is not None and sal not in self.labellers:
                        log.warning("stage %s: its saliency source '%s' is not loaded; stage skipped", s, sal)
                        continue
                    if sal is None:
                        labels = self._stage_safe(sm, vol, sbox, spacing, probs, prof)
                    else:  # refinement: the fused labels so far are its saliency input
                        labels = refine_stage(self, sm, vol, sbox, spacing, out, probs, prof)
                    _fuse(out[_slices(sbox)], labels, sm.classes, fresh=not produced,
                          clear=bool(produced & set(sm.classes)))
                    produced.update(sm.classes)
            del vol
            with prof.stage("postprocess"):
                labels = self._paste(out, region, image.shape)
                del out
                if self.postprocess and self.rules:
                    labels = apply_postprocessing(labels, {"rules": self.rules}, spacing)
                if self.nnunet is not None:
                    labels = original_frame(labels, self.nnunet)
        for d in probs.values():
            d["bbox"] = _shift(d["bbox"], origin, 1)
        prof.windows.update(self.scope.counts)
        self.scope = WindowScope()
        return labels, probs

    def _skips_windows(self) -> bool:
        """Skip air windows only where the body threshold means something: CT intensities."""
        return self.skip_air_windows and all(sm.plans["intensity"].get("scheme") == "ct" for sm in self.stages.values())

    # ------------------------------------------------------------------ the stage graph
    def _stage_order(self) -> list[str]:
        """Loaded stages, dependencies first (each stage's input as its own checkpoint's plans say)."""
        done: list[str] = []
        while len(done) < len(self.stages):
            ready = [s for s in self.stages if s not in done
                     and all(d in done or d not in self.stages for d in dependencies(self.stages[s].plans, s))]
            if not ready:
                raise AutosegError(f"the loaded stages' inputs form a cycle: {', '.join(self.stages)}")
            done.append(ready[0])
        return done

    def _source(self, stage: str) -> str:
        """The loaded stage (or the body) ``stage`` is cropped from; a missing source falls back to its own
        source (no roi model: the body), as does a localiser when the cascade is off."""
        plans = self.stages[stage].plans
        src = stage_input(plans, stage).crop
        seen = {stage}
        while src != BODY and (src not in self.stages or (src not in self.labellers and not self.use_roi)):
            if src in seen or src not in plans["stages"]:
                return BODY
            seen.add(src)
            src = stage_input(plans, src).crop
        return src

    def _base_box(self, stage: str, found: dict, body: BBox, spacing: list[float], shape) -> BBox | None:
        """The crop (original voxels) of a stage read from the body or a localiser; None for a stage
        cropped from another stage's labels (known only once that stage has run)."""
        src = self._source(stage)
        if src in self.labellers:
            return None
        if src == BODY or found.get(src) is None:
            return [list(b) for b in body]
        return bbox_with_margin(found[src], spacing, list(stage_input(self.stages[stage].plans, stage).margin_mm), shape)

    def _label_box(self, stage: str, out: torch.Tensor, spacing: list[float]) -> BBox | None:
        """Crop, in ``out``'s frame, of a stage read from predicted labels: their box plus its margin."""
        hb = self._host_box(out, stage)
        if hb is None:
            return None
        margin = list(stage_input(self.stages[stage].plans, stage).margin_mm)
        return bbox_with_margin(hb, spacing, margin, out.shape)

    def _work_region(self, box: BBox, spacing: list[float], shape: Sequence[int]) -> BBox:
        """What the label stages can read: the base crops' box, grown by the largest margin of a stage
        cropped from predicted labels (its crop lies inside the base box plus that margin)."""
        margins = [stage_input(self.stages[s].plans, s).margin_mm for s in self.labellers
                   if self._source(s) in self.labellers]
        if not margins:
            return [list(b) for b in box]
        return bbox_with_margin(box, spacing, [max(m[a] for m in margins) for a in range(3)], shape)

    @staticmethod
    def _paste(out: torch.Tensor, region: BBox, shape: Sequence[int]) -> np.ndarray:
        """The region's labels in an array of the image's shape (no copy when the region is all of it)."""
        if list(out.shape) == list(shape):
            return out.cpu().numpy()
        labels = np.zeros(shape, dtype=np.uint8 if out.dtype == torch.uint8 else np.int16)
        labels[_slices(region)] = out.cpu().numpy()
        return labels

    def _crop_volume(self, vol: torch.Tensor, region: BBox) -> torch.Tensor:
        """On a GPU a compact copy of the region, so the whole volume's memory is released; on the CPU
        a view (the volume there is the caller's own array)."""
        if vol.device.type == "cpu" or list(bbox_shape(region)) == list(vol.shape):
            return vol[_slices(region)]
        return vol[_slices(region)].clone()

    def _intensity(self) -> dict:
        return next(iter(self.stages.values())).plans["intensity"]

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        """One host->device copy, in the smallest dtype that keeps what normalisation can see."""
        return torch.from_numpy(host_array(image, self._intensity())).to(self.device)

    def _prepare(self, sm: StageModel, vol: torch.Tensor, box: BBox, spacing: list[float],
                 saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Crop the raw volume (before resampling: no work outside the box), resample, normalise;
        ``saliency`` (C, *box shape), resampled alike, is appended as extra channels."""
        crop = vol[_slices(box)][None]
        if nnunet_block(sm.config) is not None:
            return nnunet_prepare(crop, spacing, nnunet_block(sm.config), sm.spacing)
        shape = compute_new_shape(crop.shape[1:], spacing, sm.spacing)
        aniso = needs_anisotropic(spacing, sm.spacing)
        x = resample_image(crop, shape, anisotropic=aniso)
        x = normalize(x if x.dtype == torch.float32 else x.float(), sm.plans["intensity"])
        if saliency is None:
            return x
        return torch.cat([x, resample_image(saliency.float(), shape, anisotropic=aniso)])

    def _step(self, sm: StageModel) -> float:
        """The sliding-window step: the caller's, else the stage's plans' ``step_size`` (older plans: 0.5)."""
        return self.step_size if self.step_size is not None else float(sm.config.get("step_size", 0.5))

    def _mirror_axes(self, sm: StageModel) -> list[int] | None:
        return list(sm.config.get("mirror_axes", [0, 1, 2])) if self.tta else None

    def _roi_window(self, sm: StageModel, shape: Sequence[int]) -> list[int]:
        """The coarse pass only needs a box: when the whole volume (padded to the network's stride) is at
        most ``roi_single_pass_factor`` patches, one forward pass over all of it replaces the overlapping
        windows (FLARE winners' whole-volume coarse pass). Labelling stages: ``single_pass_factor``."""
        factor = self.roi_single_pass_factor if is_localiser(sm.plans, sm.stage) else self.single_pass_factor
        stride = np.prod(np.asarray(sm.config["network"]["strides"]), axis=0)
        whole = [int(-(-max(n, p) // s) * s) for n, p, s in zip(shape, sm.patch_size, stride)]
        if np.prod(whole) <= factor * np.prod(sm.patch_size):
            return whole
        return sm.patch_size

    def _localise(self, sm: StageModel, vol: torch.Tensor, spacing: list[float], body: BBox) -> BBox | None:
        """Coarse whole-body pass -> main foreground components -> their bbox in original voxels (the
        stages cropped from it add their own margins); None if nothing was found."""
        x = self._prepare(sm, vol, body, spacing)
        logits = predict_sliding_window(sm.network, x, self._roi_window(sm, x.shape[1:]), sm.num_classes,
                                        self._step(sm), self.windows_per_batch, True, self._mirror_axes(sm),
                                        self.amp, mask=self.scope.stage_mask(body, x.shape[1:], x.device),
                                        stats=self.scope.stats(sm.stage))
        fg = (logits.argmax(0) > 0).to(torch.uint8).cpu().numpy()
        coarse = fg.shape
        del logits, x
        if not fg.any():
            log.warning("%s model found no foreground; the stages cropped from it search the whole body crop",
                        sm.stage)
            return None
        cbox = main_components_bbox(fg, self.roi_min_component_fraction)
        size = bbox_shape(body)
        return [[b[0] + int(np.floor(lo * s / c)), b[0] + int(np.ceil(hi * s / c))]
                for (lo, hi), b, s, c in zip(cbox, body, size, coarse)]

    def _stage_safe(self, sm: StageModel, vol: torch.Tensor, box: BBox, spacing: list[float],
                    probs: dict, prof: CaseProfile, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Run a stage; on CUDA out-of-memory retry once on the lean path (and stay lean)."""
        try:
            return self._stage_labels(sm, vol, box, spacing, probs, saliency)
        except torch.cuda.OutOfMemoryError:
            if self.device.type != "cuda" or self.lean:
                raise
            msg = (f"CUDA out of memory in stage '{sm.stage}'; retrying with one window per forward pass "
                   "and logits kept in host memory (slower)")
            log.warning(msg)
            prof.notes.append(msg)
            self.lean = True
            torch.cuda.empty_cache()
            return self._stage_labels(sm, vol, box, spacing, probs, saliency).to(vol.device)

    def _stage_labels(self, sm: StageModel, vol: torch.Tensor, box: BBox, spacing: list[float],
                      probs: dict, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Label values (original ids) of one stage inside ``box``, at the original resolution."""
        x = self._prepare(sm, vol, box, spacing, saliency)
        net_shape = tuple(x.shape[1:])
        crop_shape = bbox_shape(box)
        host = torch.device("cpu") if self.lean else self.device
        out = torch.empty(crop_shape, dtype=self.label_dtype, device=host)
        lut = torch.tensor([0] + sm.classes, dtype=self.label_dtype, device=host)
        p = None
        if self.save_probabilities:
            p = torch.empty((sm.num_classes, *crop_shape), dtype=torch.float16)
            probs[sm.stage] = {"probabilities": p, "bbox": box, "classes": [0] + sm.classes}
        cuda_fast = self.device.type == "cuda" and not self.lean
        work = torch.float16 if cuda_fast else torch.float32
        block = nnunet_block(sm.config)
        if block is None:
            res = SlabArgmaxResampler(net_shape, out, sm.num_classes, work, self.budget_bytes, probabilities=p, lut=lut)
        else:  # an imported nnU-Net model: nnU-Net's export rule for this case's spacing
            res = logits_resampler(block, sm.spacing, spacing, net_shape, out, sm.num_classes, work,
                                   self.budget_bytes, p, lut)
        for z0, z1, slab in iter_sliding_window(
                sm.network, x, self._roi_window(sm, net_shape), sm.num_classes, self._step(sm),
                1 if self.lean else self.windows_per_batch, True if block is None else nnunet_gaussian(sm.patch_size),
                self._mirror_axes(sm), self.amp,
                torch.float16 if cuda_fast else torch.float32, accumulate_device=host,
                mask=self.scope.stage_mask(box, net_shape, x.device) if block is None else None,
                stats=self.scope.stats(sm.stage)):
            res.push(z0, z1, slab.to(host))
            del slab  # not alive during the next window's forward pass
        return out

    def _host_box(self, out: torch.Tensor, stage: str) -> BBox | None:
        """Box, in ``out``'s frame (the working region), of the labels ``stage`` is cropped around (the
        tumour stage: the predicted host organs; a refinement: its organ), before its margin: per label,
        its components of at least ``crop_min_component_fraction`` of that label's largest one."""
        values = crop_labels(self.stages[stage].plans, stage)
        tight = device_bbox(torch.isin(out, torch.tensor(values, dtype=out.dtype, device=out.device)))
        if tight is None or not self.crop_min_component_fraction:
            return tight
        sub = out[_slices(tight)].cpu().numpy()
        boxes = [main_components_bbox(sub == v, self.crop_min_component_fraction) for v in values]
        box = None
        for b in boxes:
            box = union_bbox(box, b)
        return _shift(box, [lo for lo, _ in tight], 1)

    # ------------------------------------------------------------------ files and folders
    def predict_file(self, path: str | os.PathLike, output: str | os.PathLike,
                     profile: CaseProfile | None = None) -> None:
        """Read one image (file or DICOM folder), predict, write the mask with the input's geometry."""
        from autoseg.inference.folder_io import predict_file

        predict_file(self, path, output, profile)

    def predict_folder(self, input_path: str | os.PathLike, output_dir: str | os.PathLike,
                       continue_prediction: bool = False, profile: bool = False,
                       on_profile: Callable[[str, dict], None] | None = None, num_parts: int = 1,
                       part_id: int = 0, output_format: str = "nifti") -> list[tuple[str, str]]:
        """Predict every case under ``input_path`` (or shard ``part_id`` of ``num_parts`` of them) into
        ``output_dir``; return ``[(case, reason)]`` of the cases that failed (inference/folder_io.py).
        ``self.written`` names the cases written."""
        from autoseg.inference.folder_io import predict_folder

        return predict_folder(self, input_path, output_dir, continue_prediction, profile, on_profile,
                              num_parts, part_id, output_format)
