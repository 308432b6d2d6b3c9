#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it on first use:
#   tools/env.sh deployq run        tools/env.sh pytest -q
# The environment (.venv, or $DEPLOYQ_VENV) is updated when pyproject.toml,
# tools/requirements-dev.txt or this script changes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DEPLOYQ_VENV:-$root/.venv}
stamp=$venv/.deployq-installed
python=${PYTHON:-python3}

if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
   || [ "$root/tools/requirements-dev.txt" -nt "$stamp" ] || [ "${BASH_SOURCE[0]}" -nt "$stamp" ]; then
  echo "deployq: setting up $venv (first run: about a minute)" >&2
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "deployq: Python >= 3.11 needed, $("$python" --version) found" >&2; exit 2; }
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/tools/requirements-dev.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[test,tflite,hls4ml,ray]"
  # the peer library of the robustness tests, without its declared torchvision (which
  # would replace the CPU torch with a CUDA build); it imports only torch and numpy/scipy
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "torchattacks>=3.5"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
exec "$@"
