"""Model bundles: one zip that carries everything prediction needs and nothing training needs.

Layout inside the zip (paths mirror ``AUTOSEG_RESULTS/<dataset>/`` so installing is a move)::

    manifest.json                              format, schema, name, versions, stages, sha256 per member
    plans.json, dataset.json                   the organ stage's plans; label names
    <stage>/<trainer>/fold_K/checkpoint_final.pt   weights, plans, stage only (no optimiser, no RNG)
    <stage>/<trainer>/fold_K/postprocessing.json   when the fold learned rules
    <stage>/<trainer>/compiled/network-*.onnx      with --compiled: the fold ensemble as ONNX (data, no code)
    <stage>/<trainer>/compiled/network-*.int8.*    with --compiled, where `autoseg quantize` kept one: the int8
                                                   network and its record (held-out DSC it was accepted on)

Every member is listed in the manifest with its sha256; a member missing, extra, changed, outside the
bundle's folder, or a checkpoint that ``torch.load(weights_only=True)`` refuses, makes the whole bundle
refused with one line. Installing stages everything in a hidden folder under the results root, checks
it, then moves it into place (rolled back if a move fails), so nothing is ever half installed.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np
import torch

from autoseg import AutosegError, __version__
from autoseg.paths import preprocessed_root, raw_root, results_root
from autoseg.plans import STAGES
from autoseg.utils import atomic_path, file_sha256, load_json, save_json
from autoseg.inference.models import find_stage_checkpoints, read_checkpoint, resolve_dataset_dir

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "autoseg-model-bundle"
BUNDLE_SCHEMA = 1
MANIFEST = "manifest.json"
INSTALLED = "bundles"  # AUTOSEG_RESULTS/<dataset>/bundles/<name>/{manifest,plans,dataset}.json
CHECKPOINT_KEYS = ("network_weights", "plans", "stage", "trainer_name", "fold", "epoch", "provenance")
_META = ("plans.json", "dataset.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CKPT_RE = re.compile(r"^[a-z]+/[A-Za-z0-9_.-]+/fold_\w+/[A-Za-z0-9_.-]+\.pt$")
_ONNX_RE = re.compile(r"^[a-z]+/[A-Za-z0-9_.-]+/compiled/network-[0-9a-f]{16}-[0-9x]+(\.onnx|\.int8\.onnx|\.int8\.json)$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slim_checkpoint(path: Path) -> tuple[bytes, dict]:
    """The checkpoint's prediction part (weights, plans, stage) re-serialised; optimiser and RNG dropped."""
    ckpt = read_checkpoint(path)
    slim = {k: ckpt[k] for k in CHECKPOINT_KEYS if k in ckpt}
    buf = io.BytesIO()
    torch.save(slim, buf)
    return buf.getvalue(), slim


def _compiled_members(stage: str, paths: Sequence[Path], ds_dir: Path) -> dict[str, bytes]:
    """The stage's fold ensemble exported as ONNX for one window (batch 1, the plans' patch), named as
    the predictor's onnxruntime/openvino engines look for it (inference/compiled.py): they load it
    instead of exporting on the user's machine. An int8 network `autoseg quantize` kept for these weights
    goes with it (and its record: the held-out DSC it was accepted on)."""
    from autoseg.inference.compiled import _missing_modules, export_onnx, find_int8, int8_paths, network_digest, onnx_name
    from autoseg.inference.models import load_stage_model
    from autoseg.plans import stage_in_channels

    why = _missing_modules("onnx")
    if why:
        raise AutosegError(f"--compiled: {why}")
    sm = load_stage_model(stage, paths, torch.device("cpu"))
    shape = [1, stage_in_channels(sm.plans, stage), *sm.patch_size]
    digest = network_digest(sm.network)
    folder = paths[0].relative_to(ds_dir).parent.parent.as_posix() + "/compiled"
    with tempfile.TemporaryDirectory(prefix="autoseg-onnx-") as tmp:
        out = {f"{folder}/{onnx_name(digest, shape)}":
               export_onnx(sm.network, torch.zeros(shape), Path(tmp) / "network.onnx").read_bytes()}
    try:
        model = find_int8(digest, shape, [paths[0].parent.parent / "compiled"])
    except AutosegError:  # none kept for these weights (or a stale one): nothing to carry
        return out
    for f in int8_paths(model.parent, digest, shape):
        out[f"{folder}/{f.name}"] = f.read_bytes()
    return out


def _dataset_json(name: str, plans: dict) -> dict:
    """The dataset's own dataset.json when this machine has it, else one built from the plans' labels."""
    for root in (preprocessed_root(), raw_root()):
        if (root / name / "dataset.json").is_file():
            return load_json(root / name / "dataset.json")
    return {"name": name, "channel_names": {"0": "CT"}, "labels": plans["labels"], "file_ending": ".nii.gz"}


def export_bundle(task: str | int, output: str | os.PathLike, trainer: str = "Trainer",
                  stage_trainers: dict | None = None, folds: Sequence[int | str] | None = None,
                  results: str | os.PathLike | None = None, name: str | None = None, compiled: bool = False) -> Path:
    """Write the stages' checkpoints (weights only) and their metadata as one zip; returns its path.
    ``compiled``: add each stage's network as ONNX for the CPU engines (needs the onnx package)."""
    ckpts = find_stage_checkpoints(task, trainer, stage_trainers, folds, results)
    ds_dir = resolve_dataset_dir(task, results)
    output = Path(output)
    members: dict[str, bytes] = {}
    stages: dict[str, dict] = {}
    plans = None
    for stage, paths in ckpts.items():
        entry = {"trainer": paths[0].parent.parent.name, "checkpoints": []}
        for path in paths:
            data, slim = _slim_checkpoint(path)
            rel = path.relative_to(ds_dir).parent.as_posix()
            members[f"{rel}/checkpoint_final.pt"] = data
            entry["checkpoints"].append(f"{rel}/checkpoint_final.pt")
            if (path.parent / "postprocessing.json").is_file():
                members[f"{rel}/postprocessing.json"] = (path.parent / "postprocessing.json").read_bytes()
            if plans is None or stage == "organ":
                plans = slim["plans"]
        stages[stage] = entry
        if compiled:
            members.update(_compiled_members(stage, paths, ds_dir))
    members["plans.json"] = json.dumps(plans, indent=2).encode()
    members["dataset.json"] = json.dumps(_dataset_json(ds_dir.name, plans), indent=2).encode()
    manifest = {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA,
        "name": name or output.name.removesuffix(".zip"), "dataset_name": ds_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"autoseg": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "stages": stages, "members": {k: _sha256(v) for k, v in sorted(members.items())},
    }
    with atomic_path(output, ".zip") as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2), zipfile.ZIP_DEFLATED)
            for member, data in sorted(members.items()):
                zf.writestr(member, data, zipfile.ZIP_STORED if member.endswith(".pt") else zipfile.ZIP_DEFLATED)
    log.info("exported %s (%s: stages %s) to %s", manifest["name"], ds_dir.name, ", ".join(stages), output)
    return output


# ------------------------------------------------------------------ checking
def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and ":" not in name


def check_manifest(manifest: object, where: str) -> dict:
    """Format, schema and shape of a manifest; every path it names must stay inside the bundle."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise AutosegError(f"{where}: not an autoseg model bundle ({MANIFEST} lacks format '{BUNDLE_FORMAT}')")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int):
        raise AutosegError(f"{where}: {MANIFEST} key 'schema_version' is missing or not an integer")
    if schema > BUNDLE_SCHEMA:
        raise AutosegError(f"{where}: bundle schema {schema} is newer than this autoseg reads ({BUNDLE_SCHEMA}); "
                           "upgrade autoseg")
    for key, typ in (("name", str), ("dataset_name", str), ("stages", dict), ("members", dict)):
        if not isinstance(manifest.get(key), typ) or not manifest[key]:
            raise AutosegError(f"{where}: {MANIFEST} key '{key}' is missing or not a {typ.__name__}")
    for key in ("name", "dataset_name"):
        if not _NAME_RE.match(manifest[key]):
            raise AutosegError(f"{where}: {MANIFEST} key '{key}' is not a plain name: {manifest[key]!r}")
    for stage, entry in manifest["stages"].items():
        ck = entry.get("checkpoints") if isinstance(entry, dict) else None
        if stage not in STAGES or not isinstance(ck, list) or not ck or any(
                not isinstance(c, str) or not _CKPT_RE.match(c) or not c.startswith(f"{stage}/") for c in ck):
            raise AutosegError(f"{where}: {MANIFEST} stage '{stage}' needs checkpoints named "
                               f"{stage}/TRAINER/fold_K/NAME.pt")
    folds = _fold_dirs(manifest)
    compiled = _compiled_dirs(manifest)
    bad = [m for m in manifest["members"] if not _safe_member(m) or (
        m not in _META and not any(m.startswith(f + "/") for f in folds)
        and not (_ONNX_RE.match(m) and any(m.startswith(d + "/") for d in compiled)))]
    if bad:
        raise AutosegError(f"{where}: unsafe path in {MANIFEST}: {bad[0]!r} (members are {', '.join(_META)} "
                           "and files inside the stages' fold folders or their compiled/ ONNX files)")
    missing = sorted({c for e in manifest["stages"].values() for c in e["checkpoints"]} - set(manifest["members"]))
    if missing:
        raise AutosegError(f"{where}: {MANIFEST} names checkpoint {missing[0]} but lists no hash for it")
    return manifest


def read_bundle(zip_path: str | os.PathLike, load_checkpoints: bool = True) -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {member: bytes})`` of a bundle whose every member is present, listed and unchanged."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise AutosegError(f"{zip_path}: model bundle not found")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            if MANIFEST not in names:
                raise AutosegError(f"{zip_path}: not an autoseg model bundle (no {MANIFEST})")
            manifest = check_manifest(json.loads(zf.read(MANIFEST)), str(zip_path))
            dup = sorted({n for n in names if names.count(n) > 1})
            extra = sorted(set(names) - set(manifest["members"]) - {MANIFEST})
            missing = sorted(set(manifest["members"]) - set(names))
            if dup or extra or missing:
                what = (f"member {missing[0]} is missing" if missing else f"member {extra[0]} is not in the manifest"
                        if extra else f"member {dup[0]} appears twice")
                raise AutosegError(f"{zip_path}: {what}")
            data = {m: zf.read(m) for m in manifest["members"]}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise AutosegError(f"{zip_path}: unreadable model bundle ({str(e)[:160]})") from None
    for member, blob in data.items():
        if _sha256(blob) != manifest["members"][member]:
            raise AutosegError(f"{zip_path}: member {member} was changed (sha256 does not match the manifest)")
    if load_checkpoints:
        for member, blob in data.items():
            if member.endswith(".pt"):
                read_checkpoint(blob, f"{zip_path}: {member}")
    return manifest, data


# ------------------------------------------------------------------ installing and opening
def _write_tree(data: dict[str, bytes], folder: Path) -> None:
    for member, blob in data.items():
        dest = folder / member
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(blob)


def _fold_dirs(manifest: dict) -> list[str]:
    """The fold folders a bundle fills, relative to the dataset's results folder."""
    return sorted({str(PurePosixPath(c).parent) for e in manifest["stages"].values() for c in e["checkpoints"]})


def _compiled_dirs(manifest: dict) -> list[str]:
    """The folders (``<stage>/<trainer>/compiled``) where a bundle's stages may carry ONNX exports."""
    return sorted({f"{PurePosixPath(c).parent.parent}/compiled" for e in manifest["stages"].values()
                   for c in e["checkpoints"]})


def install_bundle(zip_path: str | os.PathLike, results: str | os.PathLike | None = None,
                   overwrite: bool = False) -> Path:
    """Check the whole bundle, then move its fold folders and metadata into ``AUTOSEG_RESULTS``."""
    manifest, data = read_bundle(zip_path)
    root = results_root(results)
    ds_dir = root / manifest["dataset_name"]
    meta_dir = ds_dir / INSTALLED / manifest["name"]
    targets = _fold_dirs(manifest) + [d for d in _compiled_dirs(manifest)
                                      if any(m.startswith(d + "/") for m in manifest["members"])]
    taken = [t for t in targets if (ds_dir / t).exists()] + ([str(meta_dir)] if meta_dir.exists() else [])
    if taken and not overwrite:
        raise AutosegError(f"{ds_dir / taken[0]}: already exists; pass --overwrite to replace it")
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    moved: list[tuple[Path, Path | None]] = []  # (installed path, backup of what it replaced)
    try:
        _write_tree(data, stage / "new")
        meta = stage / "new" / "_meta"
        meta.mkdir()
        for name in _META:
            (meta / name).write_bytes(data[name])
        save_json(manifest, meta / MANIFEST)
        for rel, src in [(t, stage / "new" / t) for t in targets] + [(None, meta)]:
            dest = meta_dir if rel is None else ds_dir / rel
            backup = None
            if dest.exists():
                backup = stage / "old" / str(len(moved))
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, backup)
            dest.parent.mkdir(parents=True, exist_ok=True)
            moved.append((dest, backup))
            os.replace(src, dest)
    except BaseException:
        for dest, backup in reversed(moved):
            shutil.rmtree(dest, ignore_errors=True)
            if backup is not None:
                os.replace(backup, dest)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("installed %s into %s", manifest["name"], ds_dir)
    return meta_dir


def installed_bundles(results: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{name: metadata folder}`` of every installed bundle."""
    root = results_root(results)
    return {p.parent.name: p.parent for p in sorted(root.glob(f"*/{INSTALLED}/*/{MANIFEST}"))}


def _installed_checkpoints(meta_dir: Path) -> dict[str, list[Path]]:
    """An installed bundle's checkpoints, each checked against its manifest hash."""
    manifest = check_manifest(load_json(meta_dir / MANIFEST), str(meta_dir / MANIFEST))
    ds_dir = meta_dir.parent.parent
    for member, sha in manifest["members"].items():
        path = meta_dir / member if member in _META else ds_dir / member
        if not path.is_file():
            raise AutosegError(f"{path}: missing from installed bundle '{manifest['name']}'; reinstall it")
        if file_sha256(path) != sha:
            raise AutosegError(f"{path}: changed since bundle '{manifest['name']}' was installed (sha256 differs)")
    return {s: [ds_dir / c for c in e["checkpoints"]] for s, e in manifest["stages"].items()}


@contextlib.contextmanager
def open_model(model: str | os.PathLike, results: str | os.PathLike | None = None) -> Iterator[dict[str, list[Path]]]:
    """``{stage: [checkpoint paths]}`` of a bundle zip (checked and unpacked into a temporary folder for
    the duration) or of an installed bundle named ``model``."""
    path = Path(model)
    if path.suffix == ".zip" or path.is_file():
        manifest, data = read_bundle(path, load_checkpoints=False)  # the predictor loads with weights_only
        with tempfile.TemporaryDirectory(prefix="autoseg-bundle-") as tmp:
            _write_tree(data, Path(tmp))
            yield {s: [Path(tmp) / c for c in e["checkpoints"]] for s, e in manifest["stages"].items()}
        return
    found = installed_bundles(results)
    if str(model) not in found:
        raise AutosegError(f"model '{model}': no such bundle file, and not installed in {results_root(results)} "
                           f"(installed: {', '.join(found) or 'none'})")
    yield _installed_checkpoints(found[str(model)])
