"""The CPU engines a stage network can run on: each turns the (ensembled) network into a faster
callable for one input shape. ONNX Runtime and OpenVINO run an ONNX export of it (a data file: nothing
is unpickled), ``compile`` is ``torch.compile``, ``channels_last`` eager PyTorch in that memory format,
``openvino_int8`` the int8 network ``autoseg quantize`` kept. Which one a run uses, and whether it
agrees with eager, is decided in ``inference/compiled.py``."""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

import torch

from autoseg.utils import atomic_path

ONNX_OPSET = 17
Runner = Callable[[torch.Tensor], torch.Tensor]


class Engine(ABC):
    """One way to run a network on the CPU; subclasses say if they are installed and how they build."""

    name = ""
    persistent = False  # True: its artefact (an .onnx file) can be cached on disk and carried by a bundle
    in_auto = True  # a candidate of --engine auto (else only when named)
    bf16 = False  # computes in bf16: a candidate only where the run accepts bf16 (CPU bf16 autocast)
    int8 = False  # runs the network `autoseg quantize` wrote and accepted (never exported here)

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


class OpenVinoInt8Engine(OpenVinoEngine):
    """OpenVINO on the int8 network `autoseg quantize` wrote (post-training, calibrated on training
    cases) and kept because the held-out DSC dropped no more than its bound; by name only
    (``--engine openvino_int8``). Its other layers compute in bf16 where the CPU has native bf16, as
    when it was validated (inference/quantize.py)."""

    name = "openvino_int8"
    in_auto = False
    int8 = True

    @property
    def precision_hint(self) -> str:  # type: ignore[override]
        return int8_precision_hint()

    def build(self, network: torch.nn.Module, example: torch.Tensor, onnx_path: Path | None) -> Runner:
        one = super().build(network, example[:1], onnx_path)  # the int8 export holds one window

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([one(x[i:i + 1]) for i in range(x.shape[0])])
        return run


def int8_precision_hint() -> str:
    """OpenVINO's precision for the layers int8 leaves unquantised: bf16 where the CPU computes it natively."""
    from autoseg.devices import cpu_bf16_supported

    return "bf16" if cpu_bf16_supported() else "f32"


ENGINES: dict[str, Engine] = {e.name: e for e in (OnnxRuntimeEngine(), OpenVinoEngine(), OpenVinoBf16Engine(),
                                                   OpenVinoInt8Engine(), ChannelsLastEngine(), CompileEngine())}


def onnx_name(digest: str, shape: Sequence[int]) -> str:
    """File name of a network's ONNX export for one input shape (the digest keeps a stale file unused)."""
    return f"network-{digest[:16]}-{'x'.join(str(int(s)) for s in shape)}.onnx"


def int8_paths(folder: Path, digest: str, patch_shape: Sequence[int]) -> tuple[Path, Path]:
    """(int8 network, its record) in a trainer's ``compiled/`` folder, for one-window input ``patch_shape``."""
    base = onnx_name(digest, patch_shape)[:-len(".onnx")]
    return Path(folder) / f"{base}.int8.onnx", Path(folder) / f"{base}.int8.json"
