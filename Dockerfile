# clip-unlearn on a CUDA-enabled PyTorch base. Build with ./docker_build.sh, run with ./docker_run.sh.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    CLIP_UNLEARN_HOME=/cache/clip-unlearn \
    MPLBACKEND=Agg

WORKDIR /opt/clip-unlearn
# The base image's torch/torchvision satisfy our requirements, so pip keeps its CUDA build.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
 && useradd --create-home --uid 1000 --shell /bin/bash clip \
 && mkdir -p /cache /data /work \
 && chown -R clip:clip /cache /work

USER clip
WORKDIR /work
# Model weights (Hugging Face cache) and clip-unlearn's embedding cache survive container restarts.
VOLUME ["/cache"]
ENTRYPOINT ["clip-unlearn"]
CMD ["--help"]
