# Sourced by the GPU check scripts: run from the repository root with the wheels carried in
# `.whl` (../shared/device/wheels.sh) installed to /tmp/site, or with what python3 already has.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
