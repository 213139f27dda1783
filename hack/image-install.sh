#!/bin/sh
# Dockerfile.openvino's install step: `uv pip install ARGS` into the image's virtual environment
# /opt/ovllm. uv reads no PIP_* variables, so the pip-style build arguments are handed over here: a
# mirror (PIP_INDEX_URL), more indexes (PIP_EXTRA_INDEX_URL, space-separated), hosts to reach without
# TLS verification (PIP_TRUSTED_HOST); and the CA bundle passed as the BuildKit secret `ca`, if any.
set -eu
if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi
if [ -n "${PIP_INDEX_URL:-}" ]; then export UV_DEFAULT_INDEX="$PIP_INDEX_URL"; fi
if [ -n "${PIP_EXTRA_INDEX_URL:-}" ]; then export UV_INDEX="$PIP_EXTRA_INDEX_URL"; fi
if [ -n "${PIP_TRUSTED_HOST:-}" ]; then export UV_INSECURE_HOST="$PIP_TRUSTED_HOST"; fi
exec /opt/uv/bin/uv pip install --quiet --python /opt/ovllm/bin/python "$@"
