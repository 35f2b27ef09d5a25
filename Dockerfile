# syntax=docker/dockerfile:1
# tsunagi: an image built from the project's own wheel, in two stages (BuildKit, Docker's default builder).
#  - builder: the triage engine compiled by mypyc into a platform wheel (setup.py, TSUNAGI_COMPILE=1, as
#    `make compile` does in a clone), and every runtime dependency as a wheel;
#  - the image: python slim, those wheels installed from the builder without an index (nothing is built
#    there, and there is no compiler), run as an unprivileged user. unidic-lite's wheel carries the
#    dictionary, so nothing is downloaded at run time.
# docker build -t tsunagi .      compose.yaml runs it with PostgreSQL, Redis and a proxy (see the README).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# mypyc's C is compiled here (the image's Python headers are under /usr/local/include).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
# The build tools (the `compile` extra: mypy[mypyc], types-PyYAML) and the runtime dependencies as wheels,
# both read from pyproject.toml; mypyc type-checks against the installed dependencies. Cached while
# pyproject.toml does not change.
RUN python -m venv /build \
    && /build/bin/pip install --upgrade pip "setuptools>=70.1" wheel \
    && /build/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
open('requirements.txt', 'w').write('\n'.join(p['dependencies'])); \
open('compile.txt', 'w').write('\n'.join(p['optional-dependencies']['compile']))" \
    && /build/bin/pip install -r compile.txt \
    && /build/bin/pip wheel --wheel-dir /wheels -r requirements.txt \
    && /build/bin/pip install --no-index --find-links /wheels -r requirements.txt
COPY setup.py README.md ./
COPY bot ./bot
COPY channels ./channels
COPY triage ./triage
COPY handoff ./handoff
COPY content ./content
RUN TSUNAGI_COMPILE=1 /build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tsunagi/bin:$PATH
# Installed from the builder's wheels only (mounted for this step, not copied into a layer). The checks
# after it fail the build unless the engine is the compiled one and the dictionary and content load.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/tsunagi \
    && pip install --no-index --find-links /wheels --only-binary :all: tsunagi \
    && python -c "import triage.engine as e; assert e.__file__.endswith('.so'), e.__file__" \
    && tsunagi content check \
    && echo '{"id": "1", "text": "もう死にたい。今から飛び降りる"}' | tsunagi triage | grep -q '"risk": "crisis"'

RUN groupadd --system --gid 10001 tsunagi \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home tsunagi \
    && mkdir -m 0700 /app/var && chown tsunagi:tsunagi /app/var
WORKDIR /app
USER 10001:10001
# Generated keys and the SQLite database, when no TSUNAGI_DATA_KEY / TSUNAGI_DATABASE_URL is given: mount a
# volume here then (compose.yaml gives both, and needs none).
ENV TSUNAGI_VAR_DIR=/app/var \
    TSUNAGI_SMTP_LISTEN=0.0.0.0:2525
# Inside a container loopback is the container's own: the app and the mail listener listen beyond it.
# Publish them only where intended (compose.yaml: the web port to the proxy alone, mail to the host's MX).
EXPOSE 8000 2525
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["tsunagi", "serve", "--host", "0.0.0.0", "--port", "8000"]
