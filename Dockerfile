# tuner's image: what every Ray node of a cluster runs (docker-compose.yml builds it as
# tuner:latest). Ray needs the same Python minor version and the same Ray version on every
# node and on a driver that attaches from outside the containers: both are pinned here, and
# README ("Running on a cluster") says so. Your own code and its extras go in an image built
# FROM this one: docker/project.Dockerfile.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim
ARG RAY_VERSION=2.60.0
WORKDIR /tuner
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY studies ./studies
# CUDA wheels for the GPU workers; the CPU-only development pin lives in the Makefile.
RUN pip install --no-cache-dir "torch>=2.13.0,<2.15" "ray[default]==${RAY_VERSION}" \
    && pip install --no-cache-dir .
