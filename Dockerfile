# MessageAI in one image: a non-root user, one volume (/data), a health check.
#   docker build -t messageai .
# A cluster node's image (Redis, PostgreSQL: deploy/cluster/compose.yaml):
#   docker build --build-arg EXTRAS=cluster -t messageai-node .
#   docker run -p 8080:8080 -v messageai-data:/data messageai
# Configure with MESSAGEAI_<SECTION>__<KEY> variables (README, "Configuration") or
# mount a file and pass `serve --config /etc/messageai/messageai.toml`.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --create-home --home-dir /home/messageai messageai \
    && mkdir /data && chown messageai:messageai /data

WORKDIR /opt/messageai
COPY pyproject.toml README.md ./
COPY messageai ./messageai
# Optional extras, e.g. "cluster" (empty: the single-node server, nothing more).
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" && rm -rf /root/.cache

USER messageai
VOLUME ["/data"]
ENV MESSAGEAI_STORAGE__DATA_DIR=/data \
    MESSAGEAI_SERVER__HOST=0.0.0.0 \
    MESSAGEAI_SERVER__PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["messageai", "serve"]
