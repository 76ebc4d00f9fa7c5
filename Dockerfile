# One image for every marginflow service; docker-compose.yml picks the service by its command.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock pyproject.toml setup.py ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r requirements.lock
COPY protos ./protos
COPY tools ./tools
COPY services ./services
RUN /opt/venv/bin/python tools/gen_protos.py \
 && /opt/venv/bin/pip install --no-cache-dir --no-build-isolation --no-deps .

FROM python:3.11-slim-bookworm
# openssl: the pki step of docker-compose makes the CA, certificates and tokens (deploy/local/pki.sh).
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 marginflow && mkdir -p /pki && chown marginflow /pki
COPY --from=build /opt/venv /opt/venv
COPY deploy/local/env.sh deploy/local/pki.sh /opt/marginflow/deploy/local/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER marginflow
# Overridden per service in docker-compose.yml.
CMD ["python", "-m", "marginflow.marketdata"]
