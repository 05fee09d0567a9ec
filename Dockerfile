# Image for the worker and bridge services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY inference_allocator ./inference_allocator
RUN pip install --no-cache-dir .
ENTRYPOINT ["inference-allocator"]
