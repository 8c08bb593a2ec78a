"""`cargo xtask check-loaders`, first step: the loaders' virtual environment.

Usage: loaders_venv.py CACHE_DIR

Makes CACHE_DIR/loaders-venv-N (N: a digest of the pins) with `python3 -m venv` and
installs the pinned loaders from PyPI into it, once: GPTQModel and optimum at the
versions the issue names, transformers and torch at the versions pip chose beside them
when this list was written, and gguf (transformers reads a GGUF's tokenizer through it).
torch's Linux wheel brings CUDA libraries (about 6 GB installed); the checks run on the
CPU. Built under a temporary name and renamed, so an interrupted install never leaves a
half-made environment under the final name. Prints the environment's python on stdout.
"""
import hashlib
import os
import shutil
import subprocess
import sys

PINS = [
    "gptqmodel==7.7.0",
    "optimum==2.3.0",
    "transformers==5.24.0",
    "torch==2.15.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "gguf==0.19.0",
]


def main():
    cache = sys.argv[1]
    digest = hashlib.sha256("\n".join(PINS).encode()).hexdigest()[:12]
    final = os.path.join(cache, f"loaders-venv-{digest}")
    python = os.path.join(final, "bin", "python")
    if not os.path.exists(python):
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        say(f"installing {', '.join(PINS)} into {final} (once; several GB)")
        subprocess.run([sys.executable, "-m", "venv", partial], check=True)
        # Only `bin/python` is used (`python -m pip`, `python -c`): it finds its
        # environment from `pyvenv.cfg` beside it, so the renamed directory works.
        subprocess.run([os.path.join(partial, "bin", "python"), "-m", "pip", "install",
                        "--quiet", *PINS], check=True)
        os.rename(partial, final)
    print(python)


main()
