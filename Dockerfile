# gstratum: the pool server. `docker-compose up` runs it beside PostgreSQL (see docker-compose.yaml).
# Runtime requirements only (requirements.txt); the test tools live in requirements-dev.txt.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY gstratum ./gstratum
COPY etc ./etc
RUN useradd --system --home /app gstratum && mkdir -p /app/.gstratum && chown gstratum /app/.gstratum
USER gstratum
EXPOSE 3333 8080
# ready = fresh work for miners (a current template from bitcoind, or a current job) and a healthy database writer
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status != 200)"
# The HTTP side port listens on the container's own interfaces so that Docker can forward to it; publish it on the
# host's loopback only (docker-compose.yaml: 127.0.0.1:8080:8080; docker run: -p 127.0.0.1:8080:8080). The database
# URL comes from DATABASE_URL, never from this command line (visible to every user of the host in `ps`).
CMD ["python", "-m", "gstratum", "run", "--host", "0.0.0.0", "--port", "3333", "--http-host", "0.0.0.0"]
