"""A virtual environment of pinned PyPI packages in the cache, made once: for the Python
judges (`check-loaders`: transformers and GPTQModel; `ci`: numpy and safetensors for
`scripts/gptq_check.py`). The pins are xtask's (`main.rs`).

Usage: py_env.py CACHE_DIR NAME PIN...

Makes CACHE_DIR/NAME-D (D: a digest of the pins) with `python3 -m venv` and installs the
pins into it. Built under a temporary name and renamed, so an interrupted install never
leaves a half-made environment under the final name. Prints the environment's python on
stdout.
"""
import hashlib
import os
import shutil
import subprocess
import sys


def main():
    cache, name, pins = sys.argv[1], sys.argv[2], sys.argv[3:]
    digest = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    final = os.path.join(cache, f"{name}-{digest}")
    python = os.path.join(final, "bin", "python")
    if not os.path.exists(python):
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        say(f"installing {', '.join(pins)} into {final} (once)")
        subprocess.run([sys.executable, "-m", "venv", partial], check=True)
        # Only `bin/python` is used (`python -m pip`, `python -c`, `python SCRIPT`): it
        # finds its environment from `pyvenv.cfg` beside it, so the renamed directory works.
        subprocess.run([os.path.join(partial, "bin", "python"), "-m", "pip", "install",
                        "--quiet", *pins], check=True)
        os.rename(partial, final)
    print(python)


main()
