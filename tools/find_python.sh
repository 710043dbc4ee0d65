#!/usr/bin/env bash
# Print the path of a working Python X.Y interpreter (make test-compat: 3.10, JetPack 6's Python), or fail saying
# how to get one. Tried in order: $COMPAT_PYTHON, pythonX.Y on PATH, pyenv's installed versions, /usr/bin.
# A pyenv shim on PATH that is not enabled for X.Y fails to run and is skipped.
set -u
want=${1:?usage: tools/find_python.sh X.Y}
candidates=()
[ -n "${COMPAT_PYTHON:-}" ] && candidates+=("$COMPAT_PYTHON")
on_path=$(command -v "python$want" 2>/dev/null) && candidates+=("$on_path")
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-${HOME:-/nonexistent}/.pyenv}")
for p in "$pyenv_root"/versions/"$want".*/bin/"python$want"; do
    [ -e "$p" ] && candidates+=("$p")
done
candidates+=("/usr/bin/python$want" "/usr/local/bin/python$want")
for c in "${candidates[@]}"; do
    if [ -x "$c" ] && "$c" -c "import sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" \
            >/dev/null 2>&1; then
        echo "$c"
        exit 0
    fi
done
echo "error: no working Python $want with the venv module (tried: ${candidates[*]:-nothing}). Install it" \
     "(apt install python$want python$want-venv, or pyenv install $want) or set COMPAT_PYTHON=/path/to/python$want" >&2
exit 1
