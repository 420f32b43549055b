# agentstream worker / CLI image.
#
#   docker build -t agentstream .
#   docker run --rm agentstream config            # print the effective settings
#   docker run --rm agentstream topology diff
#   docker run ... agentstream                    # default: `agentstream worker`
#
# Every runtime dependency (faust-streaming, aiokafka, confluent-kafka, rocksdict, chdb,
# clickhouse-connect, river, fastavro, pyarrow, pandas) ships manylinux wheels for CPython 3.11
# on amd64 and arm64, so no compiler or -dev packages are installed. If a platform ever lacks a
# wheel, add `apt-get install build-essential` to the build stage only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first (read from pyproject.toml), so that editing the source does not
# reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself (a regular, non-editable install into the venv).
COPY README.md topology.yaml ./
COPY streams ./streams
COPY schemas ./schemas
COPY sinks ./sinks
COPY connectors ./connectors
RUN pip install --no-deps . \
    && agentstream --help >/dev/null

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE}

# AGENTSTREAM_TOPOLOGY_PATH: installed packages do not sit beside topology.yaml, so point at
#   the copy in /app.
# AGENTSTREAM_DATA_DIR: logs and, for the sink, embedded ClickHouse (chdb); mount a volume here.
# AGENTSTREAM_WEB_HOST: in a container the worker's web server must listen on 0.0.0.0 to be
#   reachable from outside it (the default, 127.0.0.1, is reachable only from inside).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTSTREAM_TOPOLOGY_PATH=/app/topology.yaml \
    AGENTSTREAM_DATA_DIR=/var/lib/agentstream \
    AGENTSTREAM_WEB_HOST=0.0.0.0 \
    AGENTSTREAM_WEB_PORT=6066

RUN groupadd --system --gid 10001 agentstream \
    && useradd --system --uid 10001 --gid agentstream \
        --home-dir /var/lib/agentstream --no-create-home --shell /usr/sbin/nologin agentstream \
    && mkdir -p /var/lib/agentstream /app \
    && chown agentstream:agentstream /var/lib/agentstream

COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/topology.yaml /app/topology.yaml

WORKDIR /app
USER agentstream:agentstream
VOLUME ["/var/lib/agentstream"]
EXPOSE 6066

# Healthy when the worker's web server answers HTTP (any status below 500). One-shot commands
# such as `topology apply` should disable it (docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import http.client as h, os; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('AGENTSTREAM_WEB_PORT', '6066')), timeout=4); c.request('GET', '/'); raise SystemExit(0 if c.getresponse().status < 500 else 1)"]

ENTRYPOINT ["agentstream"]
CMD ["worker"]
