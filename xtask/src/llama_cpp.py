"""`cargo xtask llama-cpp`: llama.cpp's command-line tools, built from source offline.

Usage: llama_cpp.py CACHE_DIR JOBS

The source is the PyPI source distribution of llama-cpp-python, which vendors the whole
llama.cpp tree (SHA-256 checked); CMake comes as a PyPI wheel. Only the tools the checks
and benchmarks use are built (CPU only, static): llama-quantize, llama-perplexity,
llama-imatrix. Not `-march=native`: on these machines it compiles in ggml's AMX kernels,
which crash (SIGSEGV in ggml_backend_amx_mul_mat) where the kernel does not grant AMX
tiles to the process; the build targets AVX2 + FMA + F16C instead, which every x86-64
machine of the last decade runs. They land in CACHE_DIR/llama.cpp-VERSION-FLAVOR/bin, which is
built under a temporary name and renamed, so an interrupted build never leaves a partial
directory under the final name. Prints that directory on stdout.

One patch (FLAVOR says so): llama-perplexity flushes its log before it exits. llama.cpp's
logger writes from a thread and is deliberately never torn down (common/log.cpp), so the
last lines, "Final estimate: PPL = ..." among them, can be lost when a small model
finishes within milliseconds (seen on the generated model of the CI's K-quant test).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.3.36"
SDIST = (f"llama-cpp-python=={VERSION}", f"llama_cpp_python-{VERSION}.tar.gz",
         "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
CMAKE = "cmake==4.4.5"
FLAVOR = "avx2-logflush"
FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
         "-DGGML_F16C=ON"]
TARGETS = ["llama-quantize", "llama-perplexity", "llama-imatrix"]
# (file, text, replacement): the log flush before llama-perplexity returns.
PATCH = ("tools/perplexity/perplexity.cpp",
         "    llama_backend_free();\n\n    return 0;\n}",
         "    llama_backend_free();\n\n    common_log_flush(common_log_main());\n\n"
         "    return 0;\n}")


# say() and sha256() come from common.py, which xtask runs first.


def run(args, **kw):
    say(" ".join(args))
    subprocess.run(args, check=True, **kw)


def cmake(cache):
    """The cmake binary of the pinned wheel, installed once into the cache."""
    target = os.path.join(cache, "tools", CMAKE.replace("==", "-"))
    binary = os.path.join(target, "cmake", "data", "bin", "cmake")
    if not os.path.exists(binary):
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--only-binary", ":all:", "--target", partial, CMAKE])
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    return binary


def main():
    cache, jobs = sys.argv[1], sys.argv[2]
    home = os.path.join(cache, f"llama.cpp-{VERSION}-{FLAVOR}")
    bin_dir = os.path.join(home, "bin")
    if all(os.path.exists(os.path.join(bin_dir, t)) for t in TARGETS):
        print(bin_dir)
        return
    os.makedirs(home, exist_ok=True)
    cmake_bin = cmake(cache)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        spec, name, expected = SDIST
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", spec.split("==")[0], "-d", tmp, spec])
        archive = os.path.join(tmp, name)
        got = sha256(archive)
        if got != expected:
            sys.exit(f"{archive}: SHA-256 {got}, expected {expected}")
        src = os.path.join(tmp, "src")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(VENDORED)]
            if not members:
                sys.exit(f"{archive} holds no {VENDORED}")
            for m in members:
                m.name = m.name[len(VENDORED):]
            tar.extractall(src, members=[m for m in members if m.name],
                           filter="data")
        path, text, replacement = PATCH
        path = os.path.join(src, path)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        if source.count(text) != 1:
            sys.exit(f"{path}: the text to patch is not there exactly once")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace(text, replacement))
        build = os.path.join(tmp, "build")
        run([cmake_bin, "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *FLAGS,
             "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF"],
            stdout=subprocess.DEVNULL)
        run([cmake_bin, "--build", build, "--target", *TARGETS, "-j", jobs],
            stdout=subprocess.DEVNULL)
        staged = os.path.join(tmp, "bin")
        os.makedirs(staged)
        for t in TARGETS:
            shutil.copy2(os.path.join(build, "bin", t), os.path.join(staged, t))
        shutil.rmtree(bin_dir, ignore_errors=True)
        os.replace(staged, bin_dir)
    say(f"built {', '.join(TARGETS)} into {bin_dir}")
    print(bin_dir)


if __name__ == "__main__":
    main()
