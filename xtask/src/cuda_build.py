"""What `cargo xtask build-cuda` needs besides the pinned CUDA 13.0 wheels (installed by
py_env.py): a link folder where the linker finds the CUDA libraries under their plain
names, and a link-only `libcuda.so` stub, since no wheel ships the driver
(`../shared/design/cuda.md`).

Usage: cuda_build.py VENV_PYTHON LINK_DIR CUDA_DRIVER_RS

VENV_PYTHON is the environment's python; CUDA_DRIVER_RS is cudarc's
`src/driver/sys/mod.rs`, whose `cu*` functions the stub defines (each returns
CUDA_ERROR_STUB_LIBRARY, 34: the stub must never be loaded at run time, only linked
against). Prints "CU13_DIR LINK_DIR" on the last line.
"""
import os
import re
import subprocess
import sys


def main():
    python, link, driver_rs = sys.argv[1], sys.argv[2], sys.argv[3]
    cu13 = subprocess.run(
        [python, "-c", "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    if not os.path.isdir(os.path.join(cu13, "bin")):
        sys.exit(f"xtask: {cu13} has no bin/ (nvcc): is nvidia-cuda-nvcc installed?")
    os.makedirs(link, exist_ok=True)
    lib = os.path.join(cu13, "lib")
    for name in ["cudart", "cublas", "cublasLt", "curand", "nvrtc"]:
        found = sorted(f for f in os.listdir(lib) if f.startswith(f"lib{name}.so."))
        if not found:
            sys.exit(f"xtask: no lib{name}.so.N in {lib}")
        target = os.path.join(link, f"lib{name}.so")
        if os.path.lexists(target):
            os.remove(target)
        os.symlink(os.path.join(lib, found[0]), target)

    with open(driver_rs) as f:
        names = sorted(set(re.findall(r"pub unsafe fn (cu\w+)\(", f.read())))
    if len(names) < 100:
        sys.exit(f"xtask: only {len(names)} cu* functions in {driver_rs}")
    stub_c = os.path.join(link, "cuda_stub.c")
    with open(stub_c, "w") as f:
        f.write("/* Link-only stub of the CUDA driver: never load it. */\n")
        for name in names:
            f.write(f"int {name}(void) {{ return 34; }}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    os.path.join(link, "libcuda.so"), stub_c], check=True)
    say(f"link folder {link}: CUDA libraries and a stub libcuda.so ({len(names)} functions)")
    print(cu13, link)


main()
