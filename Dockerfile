# cadx app image: the Streamlit app with its data directory on a volume. Safe by default: accounts are required
# (CADX_AUTH=required). Create the first admin at start from a secret file (a normal one: root-owned, 0600):
#   docker build -t cadx .                                                           # CUDA torch (PyPI's build)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t cadx:cpu .   # CPU-only torch
#   docker run -p 127.0.0.1:8501:8501 -v cadx-data:/data \
#     -v "$PWD/admin-password.txt:/run/secrets/cadx_admin:ro" -e CADX_ADMIN_PASSWORD_FILE=/run/secrets/cadx_admin cadx
# (user name: admin, or -e CADX_ADMIN_USER=...), or leave CADX_ADMIN_PASSWORD_FILE out: the app then shows only a
# first-run setup page that needs the one-time token printed in `docker logs CONTAINER`.
# Stop it with time for a running job to checkpoint: docker stop -t 120 CONTAINER (Docker's default is 10 s).
# Put it behind a TLS reverse proxy before anyone else reaches it (README, "Security").
FROM python:3.11-slim

# Empty: torch and torchvision from PyPI (the CUDA build). A wheel index, e.g. https://download.pytorch.org/whl/cpu:
# the same versions from there (the CPU-only build, much smaller).
ARG TORCH_INDEX_URL=""
# Weights downloaded by torch (TORCH_HOME; torchvision's AlexNet, ...) and any other cache live on the data volume,
# so they survive a recreated container.
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 CADX_DATA_DIR=/data CADX_AUTH=required \
    TORCH_HOME=/data/cache/torch XDG_CACHE_HOME=/data/cache
WORKDIR /app

# The runtime set only: the test, lint and type-check tools are in requirements-dev.txt, never in the image.
COPY requirements.txt pyproject.toml ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' requirements.txt); \
    fi && pip install -r requirements.txt
COPY . .
RUN pip install --no-deps . && useradd --uid 1000 --create-home cadx && mkdir -p /data && chown cadx /data \
    && chmod 700 /data

VOLUME /data
EXPOSE 8501
# The entrypoint starts as root to read root-only secret files, hands them to the app's user (cadx, uid 1000),
# drops to that user, opens the database and execs the command; what fails stops the start with the reason in the
# log (cadx/workflows/container.py).
ENTRYPOINT ["python", "-m", "cadx.workflows.container", "start", "--"]
# serve.py: app.py plus the route that keeps the sign-in in an HttpOnly cookie (a refresh keeps you signed in);
# on SIGTERM it stops the running job's worker at a checkpoint before it exits
CMD ["streamlit", "run", "serve.py", "--server.headless=true", "--server.address=0.0.0.0", "--server.port=8501", \
     "--browser.gatherUsageStats=false"]
# Healthy: the database opens and answers and so does the server (python: the image has no curl).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["python", "-m", "cadx.workflows.container", "health", "--url", "http://127.0.0.1:8501/_stcore/health"]
