# The service, CPU only. Build: docker build -t hsn . ; run: docker compose up
FROM python:3.11-slim-bookworm

# Where the CPU-only torch wheel comes from (a mirror or a local index can be given instead).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hsn
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY app ./app
RUN pip install .

# The default model is trained at build time (a few minutes on 2 cores) and left read-only.
RUN python -m training demo --out /opt/hsn/models/default \
    && rm /opt/hsn/models/default/checkpoint.pt /opt/hsn/models/default/synthetic_train.npz \
    && chmod -R a-w /opt/hsn/models

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hsn \
    && mkdir /data && chown hsn:hsn /data
USER hsn

ENV HSN_HOST=0.0.0.0 \
    HSN_PORT=8000 \
    HSN_MODEL_DIR=/opt/hsn/models/default \
    HSN_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "app"]
