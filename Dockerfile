# syntax=docker/dockerfile:1
# The service, CPU only. `docker compose up` builds and runs it.
FROM python:3.11-slim-bookworm

# Where the CPU-only torch wheel comes from: an index (the default), or, when TORCH_WHEELS
# names a folder mounted at build time, the CPU wheel found there.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hsn
# A CA bundle for pip, where a proxy needs one, comes in as a build secret: never in a layer.
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    if [ -n "$TORCH_WHEELS" ]; then pip install --find-links "$TORCH_WHEELS" "torch==2.13.0+cpu"; \
    else pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi

COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY app ./app
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install . && rm -rf /root/.cache

# The default model is trained at build time (a few minutes on 2 cores) and left read-only.
RUN python -m training demo --out /opt/hsn/models/default \
    && rm /opt/hsn/models/default/checkpoint.pt /opt/hsn/models/default/synthetic_train.npz \
    && chmod -R a-w /opt/hsn/models

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hsn \
    && mkdir /data && chown hsn:hsn /data
USER 10001:10001

ENV HSN_HOST=0.0.0.0 \
    HSN_PORT=8000 \
    HSN_MODEL_DIR=/opt/hsn/models/default \
    HSN_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "app"]
