# clbscf-proxy as a container image (docs/DEPLOY.md).
#
#   docker build -t clbscf-proxy:0.1.0 .
#   docker run --rm --init -p 8080:80 clbscf-proxy:0.1.0      # Hello CLB on http://localhost:8080/
#
# Two stages: `build` compiles the wheel (with the Cython hot path when native/*.pyx exist)
# and collects binary wheels of every dependency; `runtime` installs them from that folder
# only (no compiler, no index), so the final image holds no build tools.
# Needs BuildKit (Docker's default builder since 23.0) for RUN --mount.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# PROXY_REQUIRE_NATIVE=1 (the default here): this image is built with a compiler, so a failed
# compile fails the build (setup.py) rather than giving a pure wheel, and the runtime stage's
# `clbscf-proxy --version` fails if a native module is missing or stale. For a pure image:
# `docker build --build-arg PROXY_REQUIRE_NATIVE=0 .` (or PROXY_NO_NATIVE=1, which wins).
ARG PROXY_REQUIRE_NATIVE=1
ARG PROXY_NO_NATIVE=
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLBSCF_PROXY_STATE=/var/lib/clbscf-proxy

# the build arguments apply to these RUN steps only, not to the image's environment: the
# server itself falls back to the pure twins like any install
ARG PROXY_REQUIRE_NATIVE=1
ARG PROXY_NO_NATIVE=
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels clbscf-proxy \
 && clbscf-proxy --version

# uid/gid 10001: outside the ranges distributions give to system and login users, so it owns
# nothing on the host when volumes are shared. The state dir holds the OpenSSL policy file and
# any generated development certificate; it is the only place the proxy writes.
RUN groupadd --system --gid 10001 clbscf \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/clbscf-proxy \
            --no-create-home --shell /usr/sbin/nologin clbscf \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/clbscf-proxy

# The default rule table and the function it serves (Hello CLB, the built-in example). The
# config names the code relatively (functions/hello), as deploy/ does in the repository.
COPY deploy/config.example.toml /etc/clbscf-proxy/config.toml
COPY proxy/builtin/hello/ /etc/clbscf-proxy/functions/hello/
RUN clbscf-proxy --check-config /etc/clbscf-proxy/config.toml

USER 10001:10001
WORKDIR /var/lib/clbscf-proxy

# 80 and 443 bound by a non-root user: Docker (20.10+) and Podman set the namespaced sysctl
# net.ipv4.ip_unprivileged_port_start=0 for the container's own network namespace; Kubernetes
# pods set it in securityContext.sysctls (deploy/kubernetes/deployment.yaml). No setcap: file
# capabilities are ignored under no_new_privs and fail exec when capabilities are dropped.
# The admin API (/healthz, /metrics, CLB API actions) listens on 9901, on 127.0.0.1 by
# default; it is not EXPOSEd: binding it off loopback needs CLBSCF_ADMIN_TOKEN (DEPLOY.md).
EXPOSE 80 443

# SIGTERM: stop accepting, finish in-flight requests (--drain-timeout, default 30 s), exit 0.
# `docker stop -t` must allow more than the drain timeout.
STOPSIGNAL SIGTERM

# No curl in the slim image: the interpreter asks. /healthz never needs the admin token.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["clbscf-proxy"]
CMD ["--config", "/etc/clbscf-proxy/config.toml", "--admin", "127.0.0.1:9901"]
