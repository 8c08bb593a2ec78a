#!/bin/bash
# The GPU check of the `cuda` build (issue 18), one run of at most BUDGET seconds
# (default 520) that writes $OUT/gpu-check.json and $OUT/gpu-check.log:
#   1. the GPU's facts (nvidia-smi);
#   2. a tiny generated model quantized (MagR+OPTQ w3) on the CPU and on the GPU: the
#      worst relative difference of a layer's loss (it also pays the PTX compilation);
#   3. SmolLM2's perplexity on the GPU (first 40 windows of WikiText-2) against the CPU's
#      figure (CPU_PPL, default magr eval's 20.810575065747475), and the same weights on
#      the GPU against the CPU on one window (`magr eval --reference-device cpu`): the
#      hidden-state error after each block, the KL divergence;
#   4. MagR+OPTQ w3 on SmolLM2 on the GPU (32 x 2048 calibration tokens): time, perplexity;
#   5. a 7B-shaped model made on the spot (`magr gen-model --shape llama-7b`), MagR+OPTQ w4
#      on all 32 blocks with 128 x 2048 calibration tokens until the budget ends: seconds per
#      stage and per layer kind, blocks done (from the run's checkpoint when the budget
#      stops it), peak GPU memory (nvidia-smi every 0.5 s);
#   6. MagR+OPTQ-dagger (30 sweeps) on SmolLM2 if time is left.
# Inputs (environment): MAGR (default run.sh beside this script), DEVICE (cuda:0), MODEL
# (the SmolLM2 GGUF; steps 3, 4 and 6 are skipped, and said so, without it), DATA (a
# folder with wikitext-2-raw/wiki.test.raw and calibration/enwiki-excerpt.txt), WORK
# (scratch, default /tmp/magr-gpu-check: 14 GB for the generated model), PYTHON, SHAPE
# (default llama-7b). Runs on the CPU too (DEVICE=cpu SHAPE=tiny, small BUDGET) to try
# the script itself.
set -u
here=$(cd "$(dirname "$0")" && pwd)
MAGR=${MAGR:-$here/run.sh}
DEVICE=${DEVICE:-cuda:0}
BUDGET=${BUDGET:-520}
CPU_PPL=${CPU_PPL:-20.810575065747475}
DATA=${DATA:-$here/data}
WORK=${WORK:-/tmp/magr-gpu-check}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.status "$WORK/eval.json" "$WORK/compare.json"
log=$OUT/gpu-check.log
: >"$log"
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
say() { echo "gpu-check: $*" | tee -a "$log" >&2; }
# `step NAME SECONDS CMD...`: runs CMD with its output in the log, killed after SECONDS;
# records its status and wall seconds in $WORK/NAME.status.
step() {
    local name=$1 limit=$2
    shift 2
    say "$name: $* (at most ${limit} s)"
    local t0
    t0=$(date +%s%N)
    timeout --signal=KILL "$limit" "$@" >>"$log" 2>&1
    local code=$?
    echo "$code $(( ($(date +%s%N) - t0) / 1000000 ))" >"$WORK/$name.status"
    say "$name: exit $code"
}
wiki=$DATA/wikitext-2-raw/wiki.test.raw
calib=$DATA/calibration/enwiki-excerpt.txt
# SmolLM2's evaluations read WikiText-2 from the data directory, as the CPU figures do:
# magr's default joins its lines by a blank line (the papers' protocol), while a file
# given by --eval-text is read as it is (20.57 instead of 20.81 for the float model).
export MAGR_DATA_DIR=$DATA

# 1. Facts.
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader \
    >"$WORK/gpu.txt" 2>>"$log" || echo "no nvidia-smi" >"$WORK/gpu.txt"
say "GPU: $(cat "$WORK/gpu.txt")"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
    >"$WORK/memory.txt" 2>/dev/null &
smi=$!

# 2. The tiny model on both devices.
step tiny_model 60 "$MAGR" gen-model --shape tiny --out "$WORK/tiny-model" --force --quiet
for where in cpu "$DEVICE"; do
    step "tiny_${where%%:*}" 90 "$MAGR" quantize --device "$where" --model "$WORK/tiny-model" \
        --bits 3 --calib "$calib" --nsamples 4 --seqlen 1024 --eval-text "$wiki" \
        --eval-windows 2 --eval-seqlen 1024 --formats none --force \
        --out "$WORK/tiny-${where%%:*}"
done

# 3, 4: SmolLM2.
if [ -n "${MODEL:-}" ] && [ -f "${MODEL:-}" ]; then
    step eval 120 "$MAGR" eval --device "$DEVICE" --model "$MODEL" --eval-windows 40 \
        --report "$WORK/eval.json"
    step compare 120 "$MAGR" eval --device "$DEVICE" --model "$MODEL" --reference "$MODEL" \
        --reference-device cpu --eval-windows 1 \
        --report "$WORK/compare.json"
    step w3 240 "$MAGR" quantize --device "$DEVICE" --model "$MODEL" --bits 3 \
        --calib "$calib" --nsamples 32 --eval-windows 40 \
        --formats none --force --out "$WORK/w3"
else
    say "no MODEL (the SmolLM2 GGUF): steps 3, 4 and 6 skipped"
fi

# 5. The 7B-shaped model: all that the budget leaves, but a minute for step 6.
SHAPE=${SHAPE:-llama-7b}
model7b=$WORK/$SHAPE
[ -f "$model7b/config.json" ] || step gen 180 "$MAGR" gen-model --shape "$SHAPE" \
    --out "$model7b" --force --quiet
rm -rf "$WORK/7b" "$WORK/7b.partial"
limit=$(( $(left) - 60 ))
if [ "$limit" -gt 30 ]; then
    step q7b "$limit" "$MAGR" quantize --device "$DEVICE" --model "$model7b" --bits 4 \
        --calib "$calib" --nsamples 128 --seqlen 2048 --eval-windows 0 --formats none \
        --out "$WORK/7b"
fi

# 6. MagR+OPTQ-dagger on SmolLM2, if time is left.
limit=$(( $(left) - 15 ))
if [ -n "${MODEL:-}" ] && [ -f "${MODEL:-}" ] && [ "$limit" -gt 30 ]; then
    step dagger "$limit" "$MAGR" quantize --device "$DEVICE" --model "$MODEL" --bits 3 \
        --method optq-cd --sweeps 30 --calib "$calib" --nsamples 32 \
        --eval-windows 40 --formats none --force --out "$WORK/dagger"
fi
kill "$smi" 2>/dev/null

# The JSON: each step's status and seconds, and what its reports say.
"$PYTHON" - "$WORK" "$OUT/gpu-check.json" "$CPU_PPL" "$DEVICE" <<'EOF'
import json, os, sys
work, out, cpu_ppl, device = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

def read(path):
    try:
        with open(os.path.join(work, path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def status(name):
    try:
        code, millis = open(os.path.join(work, name + ".status")).read().split()
        return {"exit": int(code), "seconds": int(millis) / 1000}
    except (OSError, ValueError):
        return None

def by_kind(layers):
    """Mean seconds of MagR and of the quantizer per layer kind."""
    kinds = {}
    for l in layers:
        k = kinds.setdefault(l["layer"], {"layers": 0, "magr": 0.0, "quantizer": 0.0})
        k["layers"] += 1
        k["magr"] += (l.get("preprocess") or {}).get("seconds", 0.0)
        k["quantizer"] += l.get("quantize_seconds", 0.0)
    for k in kinds.values():
        k["magr"] /= k["layers"]
        k["quantizer"] /= k["layers"]
    return kinds

def run(name, directory):
    report = read(f"{directory}/report.json")
    result = {"status": status(name)}
    if report:
        layers = report["pipeline"]["layers"]
        result["seconds"] = report["pipeline"]["seconds"]
        result["seconds_total"] = report["seconds_total"]
        result["blocks"] = len({l["block"] for l in layers})
        result["mean_seconds_by_layer_kind"] = by_kind(layers)
        result["summed_layer_loss"] = sum(l["layer_loss"] for l in layers)
        if report.get("quantized"):
            result["ppl"] = report["quantized"]["ppl"]
        return result
    # Stopped by the budget: the checkpoint's state says how far it came.
    state = read(f"{directory}.partial/checkpoint/state.json")
    if state:
        result["seconds"] = state["report"]["seconds"]
        result["blocks"] = state["next_block"]
        result["mean_seconds_by_layer_kind"] = by_kind(state["report"]["layers"])
        result["stopped_by_budget"] = True
    return result

def tiny():
    """The tiny model's layer losses and perplexity on the CPU and on the device."""
    cpu, gpu = read("tiny-cpu/report.json"), read(f"tiny-{device.split(':')[0]}/report.json")
    result = {"status": {"cpu": status("tiny_cpu"), "device": status(f"tiny_{device.split(':')[0]}")}}
    if cpu and gpu:
        pairs = zip(cpu["pipeline"]["layers"], gpu["pipeline"]["layers"])
        result["worst_relative_layer_loss_difference"] = max(
            abs(a["layer_loss"] - b["layer_loss"]) / max(abs(a["layer_loss"]), 1e-30)
            for a, b in pairs)
        result["ppl_cpu"] = cpu["quantized"]["ppl"]
        result["ppl_device"] = gpu["quantized"]["ppl"]
    return result

try:
    memory = [int(x) for x in open(os.path.join(work, "memory.txt")).read().split()]
except (OSError, ValueError):
    memory = []
evaluation = read("eval.json")
comparison = read("compare.json")
result = {
    "device": device,
    "gpu": open(os.path.join(work, "gpu.txt")).read().strip(),
    "peak_gpu_memory_mib": max(memory) if memory else None,
    "tiny_cpu_against_device": tiny(),
    "smollm2_eval": {
        "status": status("eval"),
        "ppl": evaluation and evaluation["ppl"],
        "cpu_ppl": cpu_ppl,
        "relative_difference": evaluation and abs(evaluation["ppl"] - cpu_ppl) / cpu_ppl,
        "tokens_per_second": evaluation and evaluation["tokens_per_second"],
    },
    "smollm2_against_cpu": {
        "status": status("compare"),
        "block_error": comparison and comparison["reference"]["block_error"],
        "mean_kl": comparison and comparison["reference"]["mean_kl"],
        "ppl": comparison and comparison["ppl"],
        "cpu_ppl": comparison and comparison["reference"]["ppl"],
    },
    "smollm2_w3_magr_optq": run("w3", "w3"),
    "llama_7b_shape": {"generate": status("gen"), "w4_magr_optq": run("q7b", "7b")},
    "smollm2_w3_magr_optq_dagger": run("dagger", "dagger"),
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
EOF
