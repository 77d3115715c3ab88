# Sourced by the SqueezeNet scripts: go to the root folder and find the tool.
# Paths are relative to the root folder, as in Ristretto (whose scripts run from Caffe's root):
# the repository by default, or ROOT=/path for a copy laid out the same way.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "${ROOT:-$here/../..}"
# The tool: RISTRETTO=/path/to/ristretto, else the repository's .venv, else `ristretto` on PATH.
RISTRETTO="${RISTRETTO:-$here/../../.venv/bin/ristretto}"
if [ ! -x "$RISTRETTO" ]; then
	RISTRETTO="$(command -v ristretto)" || { echo "$0: ristretto not found; do the README's set-up" >&2; exit 1; }
fi
need() { [ -e "$1" ] || { echo "$0: $(pwd)/$1 is missing: $2 (see examples/squeezenet/README.md)" >&2; exit 1; }; }
