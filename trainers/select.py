"""``autoseg select_unlabelled``: keep the unlabelled images the current model is most certain about.

Every cached unlabelled image of a stage is predicted (sliding window on the cache, as in validation)
by each network of a trained checkpoint and given two uncertainty scores:

- ``entropy``: mean voxel entropy of the networks' mean softmax (divided by log K, so 0..1) inside
  the predicted foreground (the whole image when nothing is predicted). Works with one network.
  Restricting to the foreground keeps the score from being diluted by the easy, huge background.
- ``disagreement``: 1 - mean Dice between the two networks' argmax maps over the foreground classes
  either predicts (needs a two-network checkpoint such as TrainerCPS's; null otherwise).

The ``--keep`` fraction with the lowest ``--score`` is chosen (CSSN's filter: pseudo labels of
uncertain images mostly teach the model its own mistakes). Scores and the chosen list are written
atomically to ``unlabelled_selection_<stage>.json`` next to plans.json; semi-supervised trainers then
use only that list (delete the file to use every image again).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from autoseg import AutosegError
from autoseg.networks import build_network
from autoseg.paths import find_dataset_folder, preprocessed_root, results_root
from autoseg.plans import load_plans, num_outputs
from autoseg.preprocessing.unlabelled import unlabelled_case_ids, unlabelled_folder
from autoseg.trainers.checkpoint import load_checkpoint, most_advanced_checkpoint
from autoseg.trainers.data import open_case_arrays
from autoseg.trainers.semi import selection_path
from autoseg.utils import save_json
from autoseg.devices import resolve_device

log = logging.getLogger(__name__)
SCORES = ("entropy", "disagreement")


def load_networks(path: Path, device: torch.device) -> tuple[dict, str, list[torch.nn.Module]]:
    """(plans, stage, every network of the checkpoint), inference network first."""
    ckpt = load_checkpoint(path)
    plans, stage = ckpt["plans"], ckpt["stage"]
    states = ckpt.get("networks") or {"main": {"weights": ckpt["network_weights"]}}
    first = ckpt.get("inference_network", next(iter(states)))
    nets = []
    for name in [first] + [n for n in states if n != first]:
        net = build_network(plans["stages"][stage]["network"], 1, num_outputs(plans, stage), deep_supervision=False)
        net.load_state_dict(states[name]["weights"])
        nets.append(net.to(device).eval())
    return plans, stage, nets


def _dice_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    classes = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    if not classes:
        return 0.0
    d = [2 * np.sum((a == c) & (b == c)) / max(1, np.sum(a == c) + np.sum(b == c)) for c in classes]
    return float(1.0 - np.mean(d))


def score_case(nets: list[torch.nn.Module], data: np.ndarray, patch: list[int], k: int,
               device: torch.device) -> dict[str, float | None]:
    from autoseg.inference.sliding_window import predict_sliding_window

    image = torch.from_numpy(np.asarray(data, dtype=np.float32)).to(device)
    probs = [torch.softmax(predict_sliding_window(n, image, patch, k, amp=False), 0) for n in nets]
    mean = torch.stack(probs).mean(0)
    labels = mean.argmax(0)
    ent = -(mean * mean.clamp_min(1e-8).log()).sum(0) / math.log(k)
    fg = labels > 0
    entropy = float(ent[fg].mean() if bool(fg.any()) else ent.mean())
    disagreement = None
    if len(probs) > 1:
        disagreement = _dice_disagreement(probs[0].argmax(0).cpu().numpy(), probs[1].argmax(0).cpu().numpy())
    return {"entropy": entropy, "disagreement": disagreement,
            "foreground_fraction": float(fg.float().mean())}


def select_unlabelled(task: str | int, stage: str = "organ", trainer: str = "TrainerCPS", fold: str = "all",
                      keep: float = 0.1, score: str = "entropy", checkpoint: str | os.PathLike | None = None,
                      device: str = "auto", preprocessed: str | os.PathLike | None = None,
                      results: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Score every unlabelled cache of ``stage`` and write the selection JSON; returns its content."""
    if not 0 < keep <= 1:
        raise AutosegError(f"--keep must be a fraction in (0, 1], got {keep}")
    if score not in SCORES:
        raise AutosegError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    folder = find_dataset_folder(task, preprocessed_root(preprocessed))
    plans = load_plans(folder / "plans.json")
    if checkpoint is None:
        fold_dir = results_root(results) / plans["dataset_name"] / stage / trainer / f"fold_{fold}"
        checkpoint = most_advanced_checkpoint(fold_dir)
        if checkpoint is None:
            raise AutosegError(f"{fold_dir}: no checkpoint to score unlabelled images with (train first, "
                               "or pass --checkpoint)")
    dev = resolve_device(device)
    ck_plans, ck_stage, nets = load_networks(Path(checkpoint), dev)
    if ck_stage != stage:
        raise AutosegError(f"{checkpoint}: checkpoint is for stage '{ck_stage}', not '{stage}'")
    if score == "disagreement" and len(nets) < 2:
        raise AutosegError(f"{checkpoint}: --score disagreement needs a two-network checkpoint (e.g. TrainerCPS)")
    ids = unlabelled_case_ids(folder, stage)
    if not ids:
        raise AutosegError(f"{unlabelled_folder(folder) / stage}: no unlabelled caches (imagesUnlabeled/ + "
                           "'autoseg plan_and_preprocess')")
    from tqdm import tqdm

    patch = [int(p) for p in ck_plans["stages"][stage]["patch_size"]]
    k = num_outputs(ck_plans, stage)
    scores = {}
    for cid in tqdm(ids, desc="score unlabelled", unit="case", disable=not progress):
        data, _ = open_case_arrays(unlabelled_folder(folder) / stage / f"{cid}.npz")
        scores[cid] = score_case(nets, data, patch, k, dev)
    n_keep = max(1, int(round(keep * len(ids))))
    chosen = sorted(ids, key=lambda c: (scores[c][score], c))[:n_keep]
    out = {"stage": stage, "score": score, "keep": keep, "checkpoint": str(checkpoint),
           "num_networks": len(nets), "num_unlabelled": len(ids), "selected": sorted(chosen), "scores": scores}
    save_json(out, selection_path(folder, stage))
    log.info("kept %d of %d unlabelled images by %s", n_keep, len(ids), score)
    return out


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--task", required=True, help="dataset id (501) or name")
    parser.add_argument("--stage", default="organ", help="stage whose unlabelled caches are scored (default organ)")
    parser.add_argument("-tr", "--trainer", default="TrainerCPS", help="trainer folder of the scoring model")
    parser.add_argument("-f", "--fold", default="all", help="fold of the scoring model (default all)")
    parser.add_argument("--checkpoint", default=None, help="score with this checkpoint instead")
    parser.add_argument("--keep", type=float, default=0.1, help="fraction of images kept (default 0.1)")
    parser.add_argument("--score", choices=SCORES, default="entropy",
                        help="uncertainty ranking: entropy (any model) or disagreement (two networks)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--preprocessed", default=None, help="preprocessed root (default AUTOSEG_PREPROCESSED)")
    parser.add_argument("--results", default=None, help="results root (default AUTOSEG_RESULTS)")
    parser.add_argument("--no-progress", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    out = select_unlabelled(args.task, args.stage, args.trainer, args.fold, args.keep, args.score,
                            args.checkpoint, args.device, args.preprocessed, args.results, not args.no_progress)
    s = out["scores"]
    for cid in sorted(s, key=lambda c: s[c][out["score"]]):
        d = s[cid]["disagreement"]
        print(f"{'*' if cid in out['selected'] else ' '} {cid}  entropy {s[cid]['entropy']:.4f}  "
              f"disagreement {'n/a' if d is None else f'{d:.4f}'}")
    print(f"kept {len(out['selected'])} of {out['num_unlabelled']} (by {out['score']}); "
          f"wrote {selection_path(find_dataset_folder(args.task, preprocessed_root(args.preprocessed)), args.stage)}")
    return 0
