# cadx app image: the Streamlit app with its data directory on a volume.
#   docker build -t cadx .   &&   docker run -p 8501:8501 -v cadx-data:/data cadx
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 CADX_DATA_DIR=/data
WORKDIR /app

COPY requirements.txt pyproject.toml ./
# torch 2.14.1 from PyPI; for a smaller CPU-only image add --index-url https://download.pytorch.org/whl/cpu
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps . && useradd --create-home cadx && mkdir -p /data && chown cadx /data

USER cadx
VOLUME /data
EXPOSE 8501
CMD ["streamlit", "run", "app.py", "--server.headless=true", "--server.address=0.0.0.0", "--server.port=8501", \
     "--browser.gatherUsageStats=false"]
