# The extproc sidecar image: slim Python, non-root, read-only root filesystem friendly.
# Build: docker build -t extproc:0.1.0 .   (the Helm chart runs it next to the Envoy image)

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
# Wheels for the package and its dependencies; no compilers needed (all ship wheels).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 extproc \
    && useradd --uid 10001 --gid extproc --no-create-home --shell /usr/sbin/nologin extproc
COPY --from=build /wheels /wheels
# xds-protos ships an old opentelemetry/proto: reinstall opentelemetry-proto's own files last.
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/extproc-*.whl \
    && OTEL_PROTO="$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && pip install --no-cache-dir --no-index --find-links=/wheels --force-reinstall --no-deps "opentelemetry-proto==${OTEL_PROTO}" \
    && python -c "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter" \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=1).status == 200 else 1)"]
ENTRYPOINT ["extproc"]
CMD ["serve", "--config", "/etc/extproc/policy.yaml", "--listen", "unix:/run/extproc/ext.sock"]
