#!/bin/sh
# Runs the CUDA build of magr (`cargo xtask build-cuda`) on the GPU machine: unpacks
# magr.xz beside this script once, finds CUDA 13's libraries in the machine's torch
# venv (the binary's rpath names its usual place), and passes every argument on.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -x "$here/magr" ]; then
    xz -dc "$here/magr.xz" > "$here/magr.partial" && chmod +x "$here/magr.partial"
    mv "$here/magr.partial" "$here/magr"
fi
venv_python=${MAGR_CUDA_PYTHON:-/opt/torch/.venv/bin/python3}
if [ -x "$venv_python" ]; then
    lib=$("$venv_python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$here/magr" "$@"
