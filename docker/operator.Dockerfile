# recserve operator image (CPU).  docker build -f docker/operator.Dockerfile -t recserve-operator .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY runtime runtime
RUN pip install --no-cache-dir '.[operator]' && rm -rf /src
USER 65532:65532
ENTRYPOINT ["recserve-operator"]
