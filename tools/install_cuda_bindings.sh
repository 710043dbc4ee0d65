#!/usr/bin/env bash
# Install each cuda-python release of tools/cuda_python_versions.txt into its own throwaway folder,
# .compat/cuda-python-<version>/ (pip --target, --no-deps: only the bindings, ~150 MB each), so the tests can
# import each one in its own interpreter. Idempotent: a folder whose marker holds the same requirements is kept.
# Usage: tools/install_cuda_bindings.sh PYTHON [COMPAT_DIR]
set -euo pipefail
py=${1:?usage: $0 PYTHON [COMPAT_DIR]}
compat=${2:-.compat}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$compat"
grep -v '^#' "$here/cuda_python_versions.txt" | while read -r version reqs; do
    [ -n "$version" ] || continue
    dir="$compat/cuda-python-$version"
    if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$reqs" ]; then
        echo "[cuda-bindings] $dir: up to date"
        continue
    fi
    echo "[cuda-bindings] $dir: pip install --no-deps $reqs"
    rm -rf "$dir"
    # shellcheck disable=SC2086  # one requirement per word
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" $reqs
    echo "$reqs" > "$dir/.installed"
done
