# tlsinspector in a container: two targets (README "Container").
#
#   runtime  the proxy alone: a non-editable install in a venv, no test tools, a
#            non-root user, tini as PID 1 so `docker stop` (SIGTERM) reaches the
#            proxy, which logs a close event for every open connection and exits 0.
#     docker build --target runtime -t tlsinspector .
#     docker run --rm --network host tlsinspector run --listen 127.0.0.1:8443 --upstream HOST:443
#
#   lab      runtime plus the real TLS clients and servers (OpenSSL, curl, GnuTLS,
#            Go, wolfSSL), so `reproduce` and `matrix` work inside it.
#     docker build --target lab -t tlsinspector-lab .
#     docker run --rm tlsinspector-lab reproduce record-version-3030 --client go,wolfssl
#
# tests/test_dockerfile.py replays the install steps (no Docker engine in CI).
# gcc and libc6-dev compile proxy/scan.py with mypyc at `pip install .` (setup.py; the
# image's Python has its headers): analyze's capture loop in C. The install checks it.

FROM python:3.11-slim-bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV VENV=/opt/tlsinspector
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY tlsinspector ./tlsinspector
COPY proxy ./proxy
COPY addons ./addons
COPY configs ./configs
COPY lab ./lab
RUN python3 -m venv "$VENV" \
 && "$VENV/bin/pip" install --no-cache-dir --quiet . \
 && "$VENV/bin/tlsinspector" scenarios > /dev/null \
 && "$VENV/bin/python" -I -c "from tlsinspector.proxy import scan; assert scan.COMPILED"
WORKDIR /
RUN rm -rf /src \
 && useradd --system --create-home --home-dir /home/tlsinspector --shell /usr/sbin/nologin tlsinspector
USER tlsinspector
WORKDIR /home/tlsinspector
ENV PATH=$VENV/bin:$PATH
ENTRYPOINT ["tini", "--", "tlsinspector"]
CMD ["--help"]

FROM runtime AS lab
USER root
# The lab's peers: a subset of packages.debian (the test tools stay out).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      openssl curl gnutls-bin golang-go libwolfssl-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER tlsinspector
