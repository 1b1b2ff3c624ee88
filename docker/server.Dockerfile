# recserve server/router image: `recserve serve` and `recserve route` (onnxruntime, CPU).
#   docker build -f docker/server.Dockerfile -t recserve-server .
# GPU build: FROM nvidia/cuda:12.x-cudnn-runtime, `pip install onnxruntime-gpu` in place
# of onnxruntime; the server then picks CUDA/TensorRT for --hardware=gpu.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY runtime runtime
RUN pip install --no-cache-dir '.[runtime,operator]' && rm -rf /src
USER 65532:65532
EXPOSE 8000 8080
ENTRYPOINT ["recserve"]
