"""Helpers shared by xtask's Python steps; xtask runs each step as this file followed by
the step's own file (`python3 -c COMMON+STEP ARGS`)."""
import hashlib
import sys


def say(message):
    print(f"xtask: {message}", file=sys.stderr)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


