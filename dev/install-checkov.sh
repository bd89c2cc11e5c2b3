#!/usr/bin/env bash
# Install checkov into its own venv ($CELERY_OPERATOR_CACHE/checkov-venv): it pins packaging<24,
# which would downgrade the project venv below what pytest needs. Prints the checkov path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}
venv=$cache/checkov-venv
if ! "$venv/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
fi
echo "$venv/bin/checkov"
