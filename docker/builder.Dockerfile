# recserve builder image: `recserve optimize` and `recserve profile` in Jobs (CPU torch).
#   docker build -f docker/builder.Dockerfile -t recserve-builder .
# GPU build: start FROM nvidia/cuda:12.x-cudnn-runtime with python3.11, install the
# default (CUDA) torch wheel and onnxruntime-gpu instead of onnxruntime.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY runtime runtime
# (for a smaller image, install the CPU-only torch wheel from PyTorch's own index first)
RUN pip install --no-cache-dir torch \
 && pip install --no-cache-dir '.[build]' && rm -rf /src
ENV HOME=/var/cache/recserve RECSERVE_CACHE=/var/cache/recserve
USER 65532:65532
ENTRYPOINT ["recserve"]
