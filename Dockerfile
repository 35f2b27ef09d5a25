# tsunagi: one image for `tsunagi serve` (and `tsunagi triage` for batch use).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# gcc builds the mypyc-compiled triage engine; it is removed again after the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY bot ./bot
COPY channels ./channels
COPY triage ./triage
COPY handoff ./handoff
COPY content ./content

RUN python -m venv .venv \
    && .venv/bin/pip install --upgrade pip \
    && .venv/bin/pip install -e '.[compile]' \
    && touch .venv/.installed \
    && make compile \
    && rm -rf build build-mypyc \
    && apt-get purge -y gcc && apt-get autoremove -y

RUN useradd --create-home --uid 10001 tsunagi && mkdir -p /app/var && chown tsunagi /app/var
USER tsunagi
# Generated keys and the default SQLite database: keep them across container restarts.
VOLUME ["/app/var"]

# The mail listener too: inside a container loopback is the container's own, out of the MX's reach.
ENV TSUNAGI_SMTP_LISTEN=0.0.0.0:2525
EXPOSE 8000 2525
# Inside a container the app must listen beyond loopback; publish the ports only where intended.
CMD [".venv/bin/tsunagi", "serve", "--host", "0.0.0.0", "--port", "8000"]
