"""Post-training int8 quantisation for the CPU: calibrated on training cases, kept only where held-out
cases lose at most ``max_drop`` mean DSC against the float32 network.

Calibration data are the windows the predictor itself feeds each stage network on the calibration
cases (its preprocessing, crops and cascade included), a uniform sample of them. ONNX Runtime's static
quantiser writes a QDQ graph (per-channel int8 weights, uint8 activations, convolutions only: norms
and activations stay in floating point), which OpenVINO runs with int8 convolutions. The network and a
record (DSC per class with and without int8, cases, timings, sha256) go to the trainer's ``compiled/``
folder, where ``run_inference --engine openvino_int8`` finds them; a rejected network is not kept.
"""
from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.utils import save_json

log = logging.getLogger(__name__)

MAX_DSC_DROP = 0.01  # issue 18: int8 is kept only if mean held-out DSC drops at most this much


class WindowSampler(torch.nn.Module):
    """A stage network that keeps a uniform random sample (reservoir) of the windows it is given."""

    def __init__(self, network: torch.nn.Module, size: int, seed: int = 0):
        super().__init__()
        self.network = network
        self.size = size
        self.seen = 0
        self.kept: list[np.ndarray] = []
        self._rng = random.Random(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for window in x:
            self.seen += 1
            j = len(self.kept) if len(self.kept) < self.size else self._rng.randrange(self.seen)
            if j >= self.size:
                continue
            w = window[None].detach().float().cpu().numpy().copy()
            if j == len(self.kept):
                self.kept.append(w)
            else:
                self.kept[j] = w
        return self.network(x)


def image_cases(folder: Path, limit: int | None = None) -> list[Path]:
    """The channel-0 images of an nnU-Net style folder, sorted (a DICOM folder's series too)."""
    from autoseg.io import is_image_path

    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.iterdir() if is_image_path(p) and "_0000." in p.name)
    if not paths:
        raise AutosegError(f"{folder}: no *_0000 images")
    return paths[:limit] if limit else paths


def label_for(image: Path, labels: Path) -> Path:
    name = image.name.replace("_0000.", ".", 1)
    path = Path(labels) / name
    if not path.is_file():
        raise AutosegError(f"{path}: no label for validation image {image.name}")
    return path


def calibration_windows(predictor, stages: Sequence[str], images: Sequence[Path], windows: int,
                        seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A uniform sample of ``windows`` input windows per stage from predicting ``images``."""
    from autoseg.io import read_image

    samplers = {s: WindowSampler(predictor.stages[s].network, windows, seed) for s in stages}
    for s, sampler in samplers.items():
        predictor.stages[s].network = sampler
    try:
        for path in images:
            image, geo = read_image(path)
            predictor.predict_array(image, geo.spacing, name=path.name)
    finally:
        for s, sampler in samplers.items():
            predictor.stages[s].network = sampler.network
    empty = [s for s, sm in samplers.items() if not sm.kept]
    if empty:
        raise AutosegError(f"stage(s) {', '.join(empty)} saw no window on the calibration cases")
    return {s: sm.kept for s, sm in samplers.items()}


def quantize_onnx(fp32: Path, windows: Sequence[np.ndarray], out: Path) -> Path:
    """The QDQ int8 graph of ``fp32`` calibrated (min/max) on ``windows``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    prepared = out.with_name(out.name + ".pre.onnx")  # shapes inferred, graph optimised: what the quantiser expects
    quant_pre_process(str(fp32), str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(windows)

        def get_next(self):
            w = next(self._it, None)
            return None if w is None else {name: w}

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "ConvTranspose"])
    prepared.unlink()
    return out


def _dsc(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """DSC per label present in either map (absent in both: not counted)."""
    from autoseg.evaluation.metrics import dice

    return {c: dice(gt == c, pred == c) for c in labels if (gt == c).any() or (pred == c).any()}


def validate(predictor, int8: dict[str, torch.nn.Module], images: Sequence[Path], labels: Path) -> dict:
    """Mean DSC per label against the ground truth, float32 stage networks vs int8 ones."""
    from autoseg.io import read_image

    fp32 = {s: predictor.stages[s].network for s in int8}
    out_labels = sorted({v for s in predictor.labellers for v in predictor.stages[s].classes})
    scores: dict[str, dict[int, list[float]]] = {"fp32": {}, "int8": {}}
    for path in images:
        image, geo = read_image(path)
        gt, gt_geo = read_image(label_for(path, labels))
        if gt.shape != image.shape:
            raise AutosegError(f"{label_for(path, labels)}: shape {gt.shape} differs from its image's {image.shape}")
        for tag, nets in (("fp32", fp32), ("int8", int8)):
            for s, net in nets.items():
                predictor.stages[s].network = net
            for c, d in _dsc(predictor.predict_array(image, geo.spacing, name=path.name), gt, out_labels).items():
                scores[tag].setdefault(c, []).append(d)
    for s, net in fp32.items():
        predictor.stages[s].network = net
    per = {tag: {str(c): float(np.mean(v)) for c, v in sorted(d.items())} for tag, d in scores.items()}
    mean = {tag: float(np.mean(list(d.values()))) if d else float("nan") for tag, d in per.items()}
    return {"dsc_fp32": mean["fp32"], "dsc_int8": mean["int8"], "drop": mean["fp32"] - mean["int8"],
            "per_label": {c: {"fp32": per["fp32"][c], "int8": per["int8"].get(c, 0.0)} for c in per["fp32"]}}


def _window_seconds(network: torch.nn.Module, shape: Sequence[int]) -> float:
    from autoseg.inference.compiled import median_time, probe_input

    with torch.inference_mode():
        return median_time(network, probe_input(shape), 3)


def quantize_model(predictor, images: Sequence[Path], val_images: Sequence[Path], val_labels: Path,
                   stages: Sequence[str] | None = None, windows: int = 32, max_drop: float = MAX_DSC_DROP,
                   seed: int = 0) -> dict:
    """Calibrate, quantise and validate each stage network of a float32 eager CPU ``predictor``; the
    int8 networks are written to each stage's ``compiled/`` folder only if the DSC drop is within
    ``max_drop``. Returns the record (also written beside each network)."""
    from autoseg.inference.compiled import (ENGINES, INT8_MIN_AGREEMENT, EngineNetwork, _try, export_onnx,
                                            int8_paths, int8_precision_hint, network_digest, probe_input)
    from autoseg.plans import stage_in_channels

    stages = list(stages or predictor.order)
    bad = [s for s in stages if s not in predictor.stages]
    if bad:
        raise AutosegError(f"no stage {bad[0]!r} in this model (stages: {', '.join(predictor.stages)})")
    if ENGINES["openvino_int8"].missing():
        raise AutosegError(f"int8 needs {ENGINES['openvino_int8'].missing()}")
    t0 = time.perf_counter()
    cal = calibration_windows(predictor, stages, images, windows, seed)
    record: dict = {"format": "autoseg-int8", "max_drop": max_drop, "precision_hint": int8_precision_hint(),
                    "calibration_cases": [p.name for p in images], "validation_cases": [p.name for p in val_images],
                    "stages": {}}
    int8_nets, tmp = {}, Path(tempfile.mkdtemp(prefix="autoseg-int8-"))
    try:
        for s in stages:
            sm = predictor.stages[s]
            shape = [1, stage_in_channels(sm.plans, s), *sm.patch_size]
            digest = network_digest(sm.network)
            fp32 = export_onnx(sm.network, torch.zeros(shape), tmp / f"{s}.onnx")
            model, rec_path = int8_paths(tmp, digest, shape)
            quantize_onnx(fp32, cal[s], model)
            save_json({"accepted": True, "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}, rec_path)
            x = probe_input(shape)
            with torch.inference_mode():
                ref = sm.network(x).float()
            runner, info = _try("openvino_int8", sm.network, x, ref, digest, [tmp], INT8_MIN_AGREEMENT)
            if runner is None:
                raise AutosegError(f"stage {s}: the int8 network does not run: "
                                   f"{info.get('failed') or info.get('rejected') or info.get('skipped')}")
            int8_nets[s] = EngineNetwork(sm.network, runner, shape, "openvino_int8")
            record["stages"][s] = {"digest": digest, "patch_shape": shape, "calibration_windows": len(cal[s]),
                                   "probe_agreement": info["agreement"],
                                   "window_s_fp32": round(_window_seconds(sm.network, shape), 4),
                                   "window_s_int8": round(_window_seconds(runner, shape), 4)}
        record.update(validate(predictor, int8_nets, val_images, val_labels))
        record["accepted"] = bool(record["drop"] <= max_drop)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        for s in stages:
            _install(predictor.stages[s], tmp, record, s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _install(sm, tmp: Path, record: dict, stage: str) -> None:
    """Move an accepted int8 network (and its record) into the stage's ``compiled/`` folder; a rejected
    one leaves only its record there (why it is not used), and removes an older accepted network."""
    from autoseg.inference.compiled import int8_paths

    info = record["stages"][stage]
    dest = Path(sm.checkpoints[0]).parent.parent / "compiled"
    dest.mkdir(parents=True, exist_ok=True)
    src_model, _ = int8_paths(tmp, info["digest"], info["patch_shape"])
    model, rec_path = int8_paths(dest, info["digest"], info["patch_shape"])
    rec = dict(record, stage=stage, sha256=hashlib.sha256(src_model.read_bytes()).hexdigest())
    if record["accepted"]:
        tmp_model = model.with_suffix(".tmp")
        shutil.copyfile(src_model, tmp_model)
        tmp_model.replace(model)
    elif model.is_file():
        model.unlink()
    save_json(rec, rec_path)
