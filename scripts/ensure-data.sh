#!/bin/sh
# Make sure Fashion-MNIST is present: Debian's package when root with apt, else the loader's download.
PY=${1:-python3}
if "$PY" -c "from dcasgd.compute.data import find_dataset_dir; import sys; sys.exit(0 if find_dataset_dir('fashion-mnist') else 1)"; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package dataset-fashion-mnist" >&2
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) && exit 0
fi
echo "downloading Fashion-MNIST into ~/.cache/dcasgd" >&2
exec "$PY" -c "from dcasgd.compute.data import load_dataset; load_dataset('fashion-mnist')"
