#!/bin/bash
# Stages the GPU check for the device tool (run here, in the repository root, after
# `cargo xtask build-cuda`): two folders that .git/info/exclude ignores, each under the
# 64 MiB that one call carries.
#   .gpu1: the binary of target/cuda-dist, run.sh and gpu-check.sh from scripts/ (as they
#          are now), the two texts under data/, the SmolLM2 GGUF's first 44 MiB
#          and call1.sh, which moves it all to /tmp/g on the GPU machine and makes the
#          7B-shaped model there;
#   .gpu2: the rest of the GGUF and call2.sh, which joins it (checking its SHA-256) and
#          runs gpu-check.sh with BUDGET (default 520) seconds.
# Then, a few seconds apart (the machine stays warm for 30 s):
#   run(command="bash .gpu1/call1.sh", carry=[".gpu1"])
#   run(command="BUDGET=520 bash .gpu2/call2.sh", carry=[".gpu2"], timeout_s=600)
# Inputs (environment): MODEL (default: the fetched SmolLM2 GGUF in the cache), DATA
# (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${MAGR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/magr}
MODEL=${MODEL:-$cache/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
dist=target/cuda-dist
for f in "$dist/magr.xz" "$MODEL" \
    "$DATA/wikitext-2-raw/wiki.test.raw" "$DATA/calibration/enwiki-excerpt.txt"; do
    [ -f "$f" ] || { echo "gpu-stage: $f is missing (cargo xtask build-cuda / fetch?)" >&2; exit 1; }
done
for d in /.gpu1/ /.gpu2/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done
rm -rf .gpu1 .gpu2
mkdir -p .gpu1/data/wikitext-2-raw .gpu1/data/calibration .gpu2
cp "$dist/magr.xz" scripts/run.sh scripts/gpu-check.sh .gpu1/
cp "$DATA/wikitext-2-raw/wiki.test.raw" .gpu1/data/wikitext-2-raw/
cp "$DATA/calibration/enwiki-excerpt.txt" .gpu1/data/calibration/
head -c $((44 << 20)) "$MODEL" >.gpu1/model.part1
tail -c +$(((44 << 20) + 1)) "$MODEL" >.gpu2/model.part2
sha256sum "$MODEL" | cut -d' ' -f1 >.gpu2/model.sha256

cat >.gpu1/call1.sh <<'EOF'
#!/bin/bash
# On the GPU machine: everything to /tmp/g (the next call replaces the tree), the GPU's
# facts, and the 7B-shaped model where gpu-check.sh looks for it.
set -x
mkdir -p /tmp/g && mv .gpu1/* /tmp/g/ && cd /tmp/g || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
./run.sh --version
time ./run.sh gen-model --shape llama-7b --out /tmp/magr-gpu-check/llama-7b --force --quiet
EOF
cat >.gpu2/call2.sh <<'EOF'
#!/bin/bash
# On the GPU machine: the GGUF joined and checked, then the GPU check into $OUT.
set -u
cat /tmp/g/model.part1 .gpu2/model.part2 >/tmp/g/smollm2.gguf
[ "$(sha256sum /tmp/g/smollm2.gguf | cut -d' ' -f1)" = "$(cat .gpu2/model.sha256)" ] \
    || { echo "call2: the joined GGUF's SHA-256 differs" >&2; exit 1; }
cd /tmp/g && MAGR=/tmp/g/run.sh MODEL=/tmp/g/smollm2.gguf DATA=/tmp/g/data OUT=$OUT \
    BUDGET=${BUDGET:-520} bash gpu-check.sh
EOF
du -sb .gpu1 .gpu2 | while read -r bytes dir; do
    [ "$bytes" -le $((60 << 20)) ] || { echo "gpu-stage: $dir holds $bytes bytes, over 60 MiB (the tree travels too)" >&2; exit 1; }
    echo "gpu-stage: $dir $bytes bytes"
done
echo "gpu-stage: now, a few seconds apart:"
echo '  run(command="bash .gpu1/call1.sh", carry=[".gpu1"])'
echo '  run(command="BUDGET=520 bash .gpu2/call2.sh", carry=[".gpu2"], timeout_s=600)'
