FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY ingress ./ingress
COPY workers ./workers
COPY fallback ./fallback
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["txmail"]
