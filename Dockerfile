# cadx app image: the Streamlit app with its data directory on a volume. Safe by default: accounts are required
# (CADX_AUTH=required). Create the first admin at start from a secret file:
#   docker build -t cadx .
#   docker run -p 127.0.0.1:8501:8501 -v cadx-data:/data \
#     -v "$PWD/admin-password.txt:/run/secrets/cadx_admin:ro" -e CADX_ADMIN_PASSWORD_FILE=/run/secrets/cadx_admin cadx
# (user name: admin, or -e CADX_ADMIN_USER=...), or leave CADX_ADMIN_PASSWORD_FILE out: the app then shows only a
# first-run setup page that needs the one-time token printed in `docker logs CONTAINER`.
# Put it behind a TLS reverse proxy before anyone else reaches it (README, "Security").
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 CADX_DATA_DIR=/data CADX_AUTH=required
WORKDIR /app

COPY requirements.txt pyproject.toml ./
# torch 2.14.1 from PyPI; for a smaller CPU-only image add --index-url https://download.pytorch.org/whl/cpu
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps . && useradd --create-home cadx && mkdir -p /data && chown cadx /data && chmod 700 /data

USER cadx
VOLUME /data
EXPOSE 8501
# serve.py: app.py plus the route that keeps the sign-in in an HttpOnly cookie (a refresh keeps you signed in)
CMD ["streamlit", "run", "serve.py", "--server.headless=true", "--server.address=0.0.0.0", "--server.port=8501", \
     "--browser.gatherUsageStats=false"]
