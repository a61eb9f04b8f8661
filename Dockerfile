# tlsinspector as a sidecar: the same install as the README (make setup).
#   docker build -t tlsinspector .
#   docker run --network host tlsinspector run --listen 127.0.0.1:8443 --upstream HOST:443
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends make openssl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tlsinspector
COPY pyproject.toml README.md Makefile ./
COPY tlsinspector ./tlsinspector
COPY proxy ./proxy
COPY addons ./addons
COPY configs ./configs
COPY lab ./lab
RUN make setup PY=python3
ENV PATH=/opt/tlsinspector/.venv/bin:$PATH
ENTRYPOINT ["tlsinspector"]
CMD ["--help"]
