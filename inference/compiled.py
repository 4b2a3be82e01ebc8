"""Compiled CPU engines for a stage network, chosen by measurement, with eager PyTorch as the fallback.

An engine turns the stage's (ensembled) network into a faster callable for one input shape (the
sliding window's batch x channels x patch): ONNX Runtime and OpenVINO run an ONNX export of it (a data
file: nothing is unpickled), ``compile`` is ``torch.compile`` (inductor, weights frozen). ``auto``
times eager and every installed engine on a probe window, keeps the fastest that agrees with eager
(>= ``MIN_AGREEMENT`` of argmax voxels, finite logits) and falls back to eager with a logged reason.
The decision is cached as JSON (``$AUTOSEG_ENGINE_CACHE``, default ``~/.cache/autoseg/engines``) keyed
by the network's weights, the torch and engine versions, the CPU's flags, threads, shape and precision,
so a run measures once; each run still checks the chosen engine against eager on the probe.
Other input shapes (a whole-volume roi pass, a short last batch) run eager.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from autoseg import AutosegError
# the engines live in engines.py; their names stay importable from here
from autoseg.inference.engines import (ENGINES, ChannelsLastEngine, CompileEngine, Engine, OnnxRuntimeEngine,
                                       OpenVinoBf16Engine, OpenVinoEngine, OpenVinoInt8Engine, Runner,
                                       _missing_modules, export_onnx, int8_paths, int8_precision_hint, onnx_name)

__all__ = ["ENGINES", "ChannelsLastEngine", "CompileEngine", "Engine", "EngineNetwork", "OnnxRuntimeEngine",
           "OpenVinoBf16Engine", "OpenVinoEngine", "OpenVinoInt8Engine", "Runner", "apply_engines", "choose_engine",
           "describe", "export_onnx", "find_int8", "int8_paths", "int8_precision_hint", "network_digest",
           "onnx_name", "parse_engine_choice", "register_engine", "_missing_modules"]
from autoseg.utils import load_json, save_json

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.999  # argmax voxels that must agree with eager fp32 on the probe
MIN_GAIN = 1.05  # an engine must be this much faster than eager to replace it
# eager windows faster than this are kept eager: no engine repays its build time. 50 ms kept the default CPU
# plans' 24-32 ms bf16 windows eager, where OpenVINO bf16 made a real-sized CT 1.74x faster end to end,
# first case included (RESULTS_overlap.md, 2026-12-08); the tiny test networks' 2-9 ms windows stay eager.
MIN_WINDOW_S = 0.01
# A bf16 engine may flip at most this many times as many probe voxels (against eager fp32) as eager bf16
# does: two bf16 implementations round differently, so on near-tied voxels each flips its own few
# (OpenVINO bf16 98.541 % vs eager bf16 98.547 % on a random-weight U-Net, RESULTS_compiled.md).
BF16_FLIP_SLACK = 1.1
# int8 is judged by held-out DSC when `autoseg quantize` writes it; on the random probe it only has to be
# a segmentation of the same kind (a broken runtime agrees on far less)
INT8_MIN_AGREEMENT = 0.5


def register_engine(engine: Engine) -> Engine:
    """Add (or replace) an engine that ``auto`` and ``--engine NAME`` can choose."""
    ENGINES[engine.name] = engine
    return engine


def parse_engine_choice(choice: str) -> list[str] | None:
    """``auto`` -> the registered engines that are ``auto`` candidates, ``eager`` -> None, else the
    comma-separated names (checked)."""
    choice = (choice or "auto").strip()
    if choice == "eager":
        return None
    if choice == "auto":
        names = [n for n, e in ENGINES.items() if e.in_auto]
        if "openvino" in names and ENGINES["openvino"].missing() is None:
            # One ONNX runtime per process: with both onnxruntime and openvino loaded, a process that had
            # trained (autoseg demo) segfaulted (2026-12-02, onnxruntime 1.32 + openvino 2026.4). OpenVINO
            # was the faster of the two on every network measured (benchmarks/RESULTS_compiled.md).
            names = [n for n in names if n != "onnxruntime"]
        return names
    names = [n.strip() for n in choice.split(",") if n.strip()]
    bad = [n for n in names if n not in ENGINES]
    if bad or not names:
        raise AutosegError(f"--engine {choice!r}: unknown engine {bad[0] if bad else ''!r}; choose auto, eager "
                           f"or a comma-separated list of {', '.join(ENGINES)}")
    return names


class EngineNetwork(torch.nn.Module):
    """The stage network behind a compiled runner: windows of the built shape on the CPU go to the runner
    (in float32, outside any autocast: the engine sets its own precision), anything else to the eager
    network (under the caller's autocast)."""

    def __init__(self, network: torch.nn.Module, runner: Runner, shape: Sequence[int], engine: str):
        super().__init__()
        self.eager = network
        self.runner = runner
        self.shape = tuple(int(s) for s in shape)
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) == self.shape and x.device.type == "cpu" and x.is_floating_point():
            with torch.autocast("cpu", enabled=False):
                return self.runner(x.float())
        return self.eager(x)


# ------------------------------------------------------------------ keys, probes, timing
def network_digest(network: torch.nn.Module) -> str:
    """sha256 of the module tree and every weight: what a compiled artefact was built from."""
    h = hashlib.sha256(repr(network).encode())
    for name, t in network.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cpu_signature() -> str:
    """The CPU model and its instruction-set flags (what the ranking of engines depends on)."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = " ".join(sorted(flags.split()))
    return f"{model or platform.processor()}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def cache_dir() -> Path:
    env = os.environ.get("AUTOSEG_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoseg" / "engines"


def probe_input(shape: Sequence[int]) -> torch.Tensor:
    """A fixed normalised-CT-like window (zero mean, unit variance), the same every run."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(tuple(shape), generator=g)


def agreement(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(share of argmax voxels equal, max |logit difference|); NaN/inf logits agree nowhere."""
    out = out.float()
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return 0.0, float("inf")
    return float((ref.argmax(1) == out.argmax(1)).float().mean()), float((ref - out).abs().max())


def median_time(fn: Runner, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------ choosing

def _onnx_path(network: torch.nn.Module, digest: str, shape: Sequence[int], example: torch.Tensor,
               artefact_dirs: Sequence[Path]) -> Path:
    """A carried export (a bundle's ``compiled/`` folder) when there is one, else the cache's (made once)."""
    import onnx

    name = onnx_name(digest, shape)
    for d in artefact_dirs:
        if (Path(d) / name).is_file():
            onnx.checker.check_model(str(Path(d) / name))  # a well-formed graph, not just any file
            return Path(d) / name
    return export_onnx(network, example, cache_dir() / name)



def find_int8(digest: str, shape: Sequence[int], artefact_dirs: Sequence[Path]) -> Path:
    """The accepted int8 network for these weights and windows, checked against its record."""
    one = [1, *[int(s) for s in shape[1:]]]
    for d in artefact_dirs:
        model, record = int8_paths(d, digest, one)
        if not model.is_file():
            continue
        rec = _read_record_file(record)
        if rec is None or rec.get("accepted") is not True:
            raise AutosegError(f"{model}: no accepted quantisation record beside it ({record.name})")
        if rec.get("sha256") != hashlib.sha256(model.read_bytes()).hexdigest():
            raise AutosegError(f"{model}: differs from the network its record validated (sha256)")
        return model
    raise AutosegError("no int8 network for these weights: run `autoseg quantize` for this model first")


def _read_record_file(path: Path) -> dict | None:
    try:
        rec = load_json(path) if path.is_file() else None
    except (AutosegError, OSError):
        return None
    return rec if isinstance(rec, dict) else None


def _build(name: str, network: torch.nn.Module, example: torch.Tensor, digest: str,
           artefact_dirs: Sequence[Path]) -> Runner:
    engine = ENGINES[name]
    if engine.int8:
        return engine.build(network, example, find_int8(digest, example.shape, artefact_dirs))
    onnx = _onnx_path(network, digest, example.shape, example, artefact_dirs) if engine.persistent else None
    return engine.build(network, example, onnx)


def _try(name: str, network: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, digest: str,
         artefact_dirs: Sequence[Path], floor: float = MIN_AGREEMENT) -> tuple[Runner | None, dict]:
    """Build one engine and check it on the probe against eager fp32's logits ``ref``: (runner or None,
    what happened). ``floor``: the argmax agreement it needs (bf16 engines: see ``_floor``)."""
    why = ENGINES[name].missing()
    if why:
        return None, {"skipped": why}
    t = time.perf_counter()
    try:
        runner = _build(name, network, x, digest, artefact_dirs)
        with torch.inference_mode():
            out = runner(x)
    except Exception as e:  # an engine that cannot take this network is a candidate less, not an error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None, {"failed": f"{type(e).__name__}: {first}"}
    info = {"build_s": round(time.perf_counter() - t, 2)}
    agree, diff = agreement(ref, out)
    info.update(agreement=round(agree, 6), max_abs_diff=diff)
    if agree < floor:
        info["rejected"] = f"argmax agrees with eager fp32 on {agree:.3%} of probe voxels (< {floor:.2%})"
        return None, info
    return runner, info


def eager_bf16(network: torch.nn.Module) -> Runner:
    """What the predictor runs without an engine under CPU bf16 autocast: a copy with bf16 conv weights."""
    from autoseg.inference.models import cast_conv_weights
    import copy

    net = copy.deepcopy(network)
    cast_conv_weights(net, torch.bfloat16)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x).float()
    return run


def _floor(name: str, bf16_agreement: float | None) -> float:
    """The agreement with eager fp32 an engine needs: ``MIN_AGREEMENT``; a bf16 engine (offered only where
    the run already computes in bf16) needs what eager bf16 itself reaches on the probe, within
    ``BF16_FLIP_SLACK`` times its flipped voxels, if that is less."""
    if ENGINES[name].int8:
        return INT8_MIN_AGREEMENT
    if ENGINES[name].bf16 and bf16_agreement is not None:
        return min(MIN_AGREEMENT, 1.0 - BF16_FLIP_SLACK * (1.0 - bf16_agreement))
    return MIN_AGREEMENT


def _measure(names: list[str], baseline: Runner, network: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor,
             digest: str, artefact_dirs: Sequence[Path], auto: bool, repeats: int,
             bf16_agreement: float | None) -> tuple[str, Runner | None, dict]:
    """Time eager (``baseline``: fp32, or bf16 under autocast) and every candidate; the winner's name, its
    runner and the record to cache."""
    with torch.inference_mode():
        eager_s = median_time(baseline, x, repeats)
    record: dict = {"eager_s": round(eager_s, 4), "candidates": {}}
    if bf16_agreement is not None:
        record["eager_bf16_agreement"] = round(bf16_agreement, 6)
    if auto and eager_s < MIN_WINDOW_S:
        record["reason"] = f"one eager window takes {eager_s * 1e3:.0f} ms: too little for any engine to repay its build"
        return "eager", None, record
    best, runner = None, None
    for name in names:
        r, info = _try(name, network, x, ref, digest, artefact_dirs, _floor(name, bf16_agreement))
        if r is not None:
            with torch.inference_mode():
                info["seconds"] = round(median_time(r, x, repeats), 4)
            info["speedup"] = round(eager_s / max(info["seconds"], 1e-9), 3)
            if best is None or info["seconds"] < record["candidates"][best]["seconds"]:
                best, runner = name, r
        record["candidates"][name] = info
    if best is None:
        record["reason"] = "no engine built and agreed with eager: " + "; ".join(
            f"{n}: {i.get('skipped') or i.get('failed') or i.get('rejected')}" for n, i in record["candidates"].items())
        return "eager", None, record
    gain = record["candidates"][best]["speedup"]
    if auto and gain < MIN_GAIN:
        record["reason"] = f"fastest engine {best} is only {gain:.2f}x eager (< {MIN_GAIN:.2f}x)"
        return "eager", None, record
    record["reason"] = f"fastest of {', '.join(record['candidates'])}: {gain:.2f}x eager, agrees with eager"
    return best, runner, record


def _read_record(path: Path) -> dict | None:
    rec = _read_record_file(path)
    return rec if rec is not None and isinstance(rec.get("engine"), str) else None


def _candidates(names: list[str], choice: str, amp: bool) -> list[str]:
    """bf16 engines only where the run computes in bf16 (asked for by name otherwise: an error)."""
    if amp:
        return names
    named = [n for n in names if ENGINES[n].bf16]
    if named and choice.strip() != "auto":
        raise AutosegError(f"--engine {named[0]} computes in bf16: use it with --precision bf16 (or auto on a CPU "
                           "with native bf16)")
    return [n for n in names if not ENGINES[n].bf16]


def choose_engine(network: torch.nn.Module, shape: Sequence[int], choice: str = "auto",
                  device: torch.device | str = "cpu", amp: bool = False, label: str = "network",
                  artefact_dirs: Sequence[Path] = (), repeats: int = 3) -> tuple[torch.nn.Module, dict]:
    """``(network to call, record)``: the network behind the engine ``choice`` picks for windows of
    ``shape`` (batch, channels, *patch), or the eager network itself, with the reason in ``record``.
    ``amp``: the run computes in bf16 (CPU autocast); eager then means eager bf16, the fp32 engines
    stay candidates and the bf16 ones join them. ``network`` must hold float32 weights."""
    names = parse_engine_choice(choice)
    device = torch.device(device)
    eager = lambda reason: (network, {"engine": "eager", "reason": reason})  # noqa: E731
    if names is None:
        return eager("--engine eager")
    if device.type != "cpu":
        return eager(f"{device.type}: compiled engines are for the CPU")
    names = _candidates(names, choice, amp)
    shape = [int(s) for s in shape]
    digest = network_digest(network)
    auto = choice.strip() == "auto"
    key_fields = {"network": digest, "shape": shape, "precision": "bf16" if amp else "fp32",
                  "threads": torch.get_num_threads(), "cpu": cpu_signature(), "versions": _versions(),
                  "candidates": names, "auto": auto,
                  "rules": [MIN_AGREEMENT, MIN_GAIN, MIN_WINDOW_S, BF16_FLIP_SLACK]}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / f"decision-{key}.json"
    cached = _read_record(path)
    if cached is not None and cached["engine"] == "eager":
        return network, dict(cached, cached=True)
    x = probe_input(shape)
    baseline: Runner = eager_bf16(network) if amp else network
    with torch.inference_mode():
        ref = network(x).float()
        bf16_agreement = agreement(ref, baseline(x))[0] if amp else None
    if cached is not None and cached["engine"] in ENGINES:
        runner, info = _try(cached["engine"], network, x, ref, digest, artefact_dirs,
                            _floor(cached["engine"], bf16_agreement))
        if runner is not None:
            log.info("%s: engine %s (cached decision %s)", label, cached["engine"], path.name)
            return EngineNetwork(network, runner, shape, cached["engine"]), dict(cached, cached=True, check=info)
        log.warning("%s: cached engine %s no longer works (%s); measuring again", label, cached["engine"],
                    info.get("skipped") or info.get("failed") or info.get("rejected"))
    log.info("%s: timing eager%s and %s on a %s window (once; the decision is cached)", label,
             " bf16" if amp else "", ", ".join(names), "x".join(map(str, shape)))
    name, runner, record = _measure(names, baseline, network, x, ref, digest, artefact_dirs, auto, repeats,
                                    bf16_agreement)
    record = {"engine": name, **record, "key": key_fields}
    try:
        save_json(record, path)
    except (AutosegError, OSError) as e:
        log.warning("%s: engine decision not cached (%s)", label, str(e).splitlines()[0])
    log.info("%s: engine %s (%s)", label, name, record["reason"])
    if runner is None:
        return network, record
    return EngineNetwork(network, runner, shape, name), record


def apply_engines(stages: dict, choice: str, device: torch.device, amp: bool, windows_per_batch: int) -> dict:
    """Put each stage's network behind its chosen engine (``StageModel.network`` is replaced);
    ``{stage: record}`` says which engine each stage uses and why."""
    from autoseg.plans import stage_in_channels

    out = {}
    for stage, sm in stages.items():
        shape = [windows_per_batch, stage_in_channels(sm.plans, stage), *sm.patch_size]
        dirs = [Path(sm.checkpoints[0]).parent.parent / "compiled"] if sm.checkpoints else []
        sm.network, out[stage] = choose_engine(sm.network, shape, choice, device, amp, f"stage {stage}", dirs)
    return out


def describe(records: dict) -> str:
    """One line: the engine of each stage, with its measured gain where there is one."""
    parts = []
    for stage, rec in records.items():
        gain = rec.get("candidates", {}).get(rec["engine"], {}).get("speedup")
        parts.append(f"{stage} {rec['engine']}" + (f" ({gain:.2f}x eager)" if gain else ""))
    return "engines: " + ", ".join(parts)
