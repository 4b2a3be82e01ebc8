# autoseg inference image for the FLARE protocol:
#   docker build -t autoseg .                                   # CPU torch (default)
#   docker build --build-arg VARIANT=cu126 -t autoseg:cuda .    # CUDA torch (any tag of download.pytorch.org/whl)
#   docker run --rm [--gpus all] -v $PWD/inputs:/workspace/inputs -v $PWD/outputs:/workspace/outputs autoseg
# The model bundle ('autoseg export ... -o docker/model.zip') is baked in when docker/model.zip exists at
# build time; otherwise mount one: -v $PWD/model.zip:/workspace/model.zip
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/autoseg
# torch first, from the CPU or CUDA wheel index (the CUDA wheels carry their CUDA libraries: the host
# needs only the NVIDIA driver and --gpus)
RUN python -m pip install --index-url "https://download.pytorch.org/whl/${VARIANT}" "torch==${TORCH_VERSION}"
COPY setup.py README.md ./
COPY autoseg autoseg
COPY planners planners
COPY trainers trainers
COPY inference inference
COPY evaluation evaluation
RUN python -m pip install ".[dicom,engines]" && autoseg --version

WORKDIR /workspace
# predict.sh always; every docker/*.zip too (docker/model.zip is the bundle predict.sh reads by default)
COPY docker/predict.sh docker/*.zip /workspace/
CMD ["sh", "predict.sh"]
