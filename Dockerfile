# gstratum: the pool server. `docker-compose up` runs it beside PostgreSQL (see docker-compose.yaml).
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
CMD ["python", "-m", "gstratum", "run", "--host", "0.0.0.0", "--port", "3333", "--http-host", "0.0.0.0"]
