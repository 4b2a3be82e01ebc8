"""autoseg: a self-configuring ROI -> organ -> tumour cascade for abdominal CT."""
from setuptools import find_packages, setup

STAGE_FOLDERS = ("planners", "trainers", "inference", "evaluation")


def _packages() -> list[str]:
    """autoseg and its subpackages, plus each stage folder (and its subfolders) as autoseg.<folder>."""
    found = find_packages(include=["autoseg", "autoseg.*"])
    for name in STAGE_FOLDERS:
        found += [f"autoseg.{p}" for p in find_packages(include=[name, f"{name}.*"])]
    return found


setup(
    name="autoseg",
    version="0.1.0",
    description="Self-configuring, fused-cascade segmentation of abdominal organs and tumours in CT",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The stage folders sit at the top of the repository (one folder per pipeline step) but install
    # under the autoseg namespace, so nothing generic like `trainers` shadows another distribution.
    packages=_packages(),
    package_dir={f"autoseg.{name}": name for name in STAGE_FOLDERS},
    install_requires=[
        # torch is deliberately unpinned here: install torch==2.13.0 first (see README / Makefile)
        # so pip does not pull a multi-GB CUDA build on CPU machines.
        "torch>=2.4",  # device-typed autocast API (autoseg.devices.TORCH_MIN)
        "numpy>=1.24",
        "SimpleITK>=2.2",
        "batchgeneratorsv2>=0.3",
        "scikit-image>=0.21",
        "scipy>=1.10",
        "nibabel>=5.0",
        "connected-components-3d>=3.12",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pydantic>=2.0",
    ],
    extras_require={
        "test": ["pytest>=7", "highdicom>=0.22", "onnx>=1.15", "onnxruntime>=1.17", "openvino>=2024.1"],
        # run_inference --engine auto|onnxruntime|openvino: compiled CPU engines (inference/compiled.py)
        "engines": ["onnx>=1.15", "onnxruntime>=1.17", "openvino>=2024.1"],
        "dicom": ["highdicom>=0.22", "pydicom>=2.4"],  # run_inference --output-format dicom-seg|both
    },
    entry_points={"console_scripts": ["autoseg=autoseg.cli:main"]},
)
