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
from abc import ABC, abstractmethod
import json
import logging
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from autoseg import AutosegError
from autoseg.utils import atomic_path, load_json, save_json

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.999  # argmax voxels that must agree with eager fp32 on the probe
MIN_GAIN = 1.05  # an engine must be this much faster than eager to replace it
MIN_WINDOW_S = 0.05  # eager windows faster than this are kept eager: no engine repays its build time
# A bf16 engine may flip at most this many times as many probe voxels (against eager fp32) as eager bf16
# does: two bf16 implementations round differently, so on near-tied voxels each flips its own few
# (OpenVINO bf16 98.541 % vs eager bf16 98.547 % on a random-weight U-Net, RESULTS_compiled.md).
BF16_FLIP_SLACK = 1.1
ONNX_OPSET = 17
Runner = Callable[[torch.Tensor], torch.Tensor]


class Engine(ABC):
    """One way to run a network on the CPU; subclasses say if they are installed and how they build."""

    name = ""
    persistent = False  # True: its artefact (an .onnx file) can be cached on disk and carried by a bundle
    in_auto = True  # a candidate of --engine auto (else only when named)
    bf16 = False  # computes in bf16: a candidate only where the run accepts bf16 (CPU bf16 autocast)

    def missing(self) -> str | None:
        """Why this engine cannot run here (a package not installed), or None."""
        return None

    @abstractmethod
    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        """The runner for windows of ``example``'s shape (``onnx_path``: the export, for persistent engines)."""


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The network's inference forward traced at ``example``'s shape into an ONNX file (written
    atomically; reused when it exists: its name carries the network's digest)."""
    if path.is_file():
        return path
    import warnings

    with atomic_path(path, ".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
        torch.onnx.export(network, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["x"], output_names=["logits"])
    return path


class ChannelsLastEngine(Engine):
    """Eager PyTorch with channels-last (NDHWC) weights and inputs: oneDNN's blocked 3D convolutions
    without the layout reorders around each call; nothing to export, any input shape."""

    name = "channels_last"

    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        import copy

        net = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
        return lambda x: net(x.contiguous(memory_format=torch.channels_last_3d))


class CompileEngine(Engine):
    """``torch.compile`` with inductor (fused conv + norm + activation, frozen weights); needs a C compiler.
    Not an ``auto`` candidate: nothing of it can be cached or carried, so every run pays its compile
    (over a minute per stage on 2 cores, benchmarks/RESULTS_compiled.md); ``--engine compile`` asks for it."""

    name = "compile"
    in_auto = False

    def missing(self) -> str | None:
        return None if (shutil.which("gcc") or shutil.which("cc")) else "no C compiler (gcc) for inductor"

    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fn = torch.compile(network, backend="inductor", dynamic=False)
        with torch.inference_mode():
            fn(example)  # compiles now, not in the first window
        return fn


def _missing_modules(*names: str) -> str | None:
    """'X not installed ...' for the first of ``names`` that does not import (the export needs onnx)."""
    import importlib.util

    for n in names:
        if importlib.util.find_spec(n) is None:
            return f"{n} not installed (pip install 'autoseg[engines]')"
    return None


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime, CPU execution provider, every graph optimisation."""

    name = "onnxruntime"
    persistent = True

    def missing(self) -> str | None:
        return _missing_modules("onnxruntime", "onnx")

    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.detach().contiguous().numpy()})[0])
        return run


class OpenVinoEngine(Engine):
    """OpenVINO's CPU plugin on the ONNX export, fp32 precision hint (no silent bf16), latency mode."""

    name = "openvino"
    persistent = True
    precision_hint = "f32"

    def missing(self) -> str | None:
        return _missing_modules("openvino", "onnx")

    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": self.precision_hint, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            request.infer({0: x.detach().contiguous().numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return run


class OpenVinoBf16Engine(OpenVinoEngine):
    """OpenVINO with the bf16 precision hint, on CPUs with native bf16 (AVX512-BF16/AMX) only, and only
    where the run already accepts bf16 (``--precision auto`` there, or ``bf16``): 1.5x OpenVINO fp32 on
    the EPYC (AVX512-BF16) measured in benchmarks/RESULTS_compiled.md."""

    name = "openvino_bf16"
    precision_hint = "bf16"
    bf16 = True

    def missing(self) -> str | None:
        from autoseg.devices import cpu_bf16_supported

        why = super().missing() or (None if cpu_bf16_supported() else "CPU lacks native bf16 (AVX512-BF16/AMX)")
        if why:
            return why
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return None if "BF16" in caps else f"OpenVINO's CPU plugin lacks BF16 (capabilities: {', '.join(caps)})"


ENGINES: dict[str, Engine] = {e.name: e for e in (OnnxRuntimeEngine(), OpenVinoEngine(), OpenVinoBf16Engine(),
                                                   ChannelsLastEngine(), CompileEngine())}


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
def onnx_name(digest: str, shape: Sequence[int]) -> str:
    """File name of a network's ONNX export for one input shape (the digest keeps a stale file unused)."""
    return f"network-{digest[:16]}-{'x'.join(str(int(s)) for s in shape)}.onnx"


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


def _build(name: str, network: torch.nn.Module, example: torch.Tensor, digest: str,
           artefact_dirs: Sequence[Path]) -> Runner:
    engine = ENGINES[name]
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
    try:
        rec = load_json(path) if path.is_file() else None
    except (AutosegError, OSError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("engine"), str) else None


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
