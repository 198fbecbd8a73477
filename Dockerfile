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
    PYTHONUNBUFFERED=1 \
    EXTPROC_ADMIN=0.0.0.0:9464
RUN groupadd --gid 10001 extproc \
    && useradd --uid 10001 --gid extproc --no-create-home --shell /usr/sbin/nologin extproc \
    && install -d -o 10001 -g 10001 /run/extproc
# The wheels come in through a bind mount, so they never become a layer of the image.
# xds-protos ships an old opentelemetry/proto: reinstall opentelemetry-proto's own files last.
# Then drop the packaging tools: nothing is built or installed at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/extproc-*.whl \
    && OTEL_PROTO="$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && pip install --no-cache-dir --no-index --find-links=/wheels --force-reinstall --no-deps "opentelemetry-proto==${OTEL_PROTO}" \
    && python -c "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter" \
    && pip uninstall --yes setuptools wheel pip
USER 10001:10001
VOLUME ["/run/extproc"]
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request as u; p=os.environ['EXTPROC_ADMIN'].rpartition(':')[2]; sys.exit(0 if u.urlopen('http://127.0.0.1:'+p+'/healthz', timeout=1).status == 200 else 1)"]
ENTRYPOINT ["extproc"]
CMD ["serve", "--config", "/etc/extproc/policy.yaml", "--listen", "unix:/run/extproc/ext.sock"]
