#!/usr/bin/env bash
# Regenerate deploy/ and the chart's CRD copy from charts/celery-operator and crds/.
# `dev/gen-manifests.sh --check` changes nothing and exits 1 when something is stale.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
[ -x "$py" ] || py=python3
exec "$py" "$here/gen_manifests.py" "$@"
