#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with .device/ carried (built here by
# scripts/device-build.sh; that machine has CUDA, PyTorch and python3 but no Rust). One call:
#   (a) GPU tests: every carried test binary with DCL_TEST_CUDA=1, --test-threads=1
#       (cuda_parity first; the PyTorch parity test with DCL_TORCH_PYTHON set)
#   (b) dcl bench kernels --device cuda --json $OUT/bench.json
#   (c) PyTorch parity on the GPU, full-width counter and localizer (dcl on cuda and on cpu,
#       both against torch on cuda with TF32 off), and PyTorch eager step timings
#   (d) a short full-width counter training run on the VGG cells (--device cuda --profile)
#   (e) counting throughput on the GPU, full width (random checkpoints): the VGG val folder
#       with counter alone and with localizer and every output, and one 4096x4096 synthetic
#       image; `dcl count` prints images/s and how busy the networks were
#   (f) a summary table, printed last and written to $OUT/summary.txt
# Every part has a time limit (seconds, env): T_TESTS T_BENCH T_PARITY T_TRAIN T_COUNT; the
# default sum stays inside one 10-minute device command. Outputs (8 files at most come back):
#   summary.txt tests.log bench.json bench.log parity.log parity.json train.log count.log
# (train.log ends with the run's metrics.jsonl).
# Exit status: the number of parts that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
OUT=${OUT:-/tmp/dcl-device-out}
mkdir -p "$OUT"
work=${DCL_DEVICE_WORK:-/tmp/dcl-device}
rm -rf "$work"
mkdir -p "$work"
PY=${PYTHON:-python3}
T_TESTS=${T_TESTS:-150}
T_BENCH=${T_BENCH:-90}
T_PARITY=${T_PARITY:-120}
T_TRAIN=${T_TRAIN:-150}
T_COUNT=${T_COUNT:-60}
TOL=${PARITY_TOL:-1e-4}
TORCH_DEVICE=${TORCH_DEVICE:-cuda} # cpu only to try this script on a machine without a GPU
export PYTHONUNBUFFERED=1
bin=$root/.device/bin
dcl=$bin/dcl
declare -a rows=()

row() { rows+=("$(printf '%-11s %-7s %s' "$1" "$2" "$3")"); }
stamp() { date +%s; }

if [ ! -x "$dcl" ]; then
    echo "device-run: $dcl is missing: run scripts/device-build.sh here and carry .device" | tee "$OUT/summary.txt"
    exit 5
fi
export DCL_BIN=$dcl

# Tests were built elsewhere: cargo baked that checkout's path (fixtures, CARGO_BIN_EXE_dcl)
# into them. Make those paths lead here.
if [ -f "$bin/paths.env" ]; then
    # shellcheck disable=SC1091
    . "$bin/paths.env"
    if [ -n "${BAKED_MANIFEST_DIR:-}" ] && [ ! -e "$BAKED_MANIFEST_DIR" ]; then
        mkdir -p "$(dirname "$BAKED_MANIFEST_DIR")" && ln -s "$root" "$BAKED_MANIFEST_DIR"
    fi
    if [ -n "${BAKED_DCL:-}" ] && [ ! -e "$BAKED_DCL" ]; then
        mkdir -p "$(dirname "$BAKED_DCL")" && ln -s "$dcl" "$BAKED_DCL"
    fi
fi

{
    echo "device-run $(date -u +%FT%TZ) in $root"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
} | tee "$work/env.txt"

# ---- (a) GPU tests ------------------------------------------------------------------------
t0=$(stamp)
: >"$OUT/tests.log"
tests_ok=0 tests_bad=0 passed=0 failed=0 notes=()
mapfile -t names < <(
    { grep -x cuda_parity "$bin/tests.list"; grep -vx cuda_parity "$bin/tests.list"; } 2>/dev/null
)
for name in "${names[@]}"; do
    left=$((T_TESTS - ($(stamp) - t0)))
    if [ "$left" -le 5 ]; then
        notes+=("$name: not run (time)")
        echo "== $name: not run, part (a) is out of time" >>"$OUT/tests.log"
        continue
    fi
    echo "== $name" >>"$OUT/tests.log"
    DCL_TEST_CUDA=1 DCL_TORCH_PYTHON=$PY RUST_BACKTRACE=1 timeout "$left" \
        "$bin/$name" --test-threads=1 >"$work/test.log" 2>&1
    rc=$?
    cat "$work/test.log" >>"$OUT/tests.log"
    res=$(grep -E '^test result:' "$work/test.log" | tail -1)
    p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$res")
    f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$res")
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    if [ "$rc" -eq 0 ]; then
        tests_ok=$((tests_ok + 1))
    else
        tests_bad=$((tests_bad + 1))
        notes+=("$name: exit $rc")
    fi
    echo "== $name: exit $rc" >>"$OUT/tests.log"
done
cuda_line=$(awk '/^== cuda_parity$/{f=1} f && /^test result:/{print; exit}' "$OUT/tests.log" |
    sed -nE 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 passed, \2 failed/p')
detail="$tests_ok/${#names[@]} binaries ok, $passed tests passed, $failed failed; cuda_parity: ${cuda_line:-no result}"
[ ${#notes[@]} -gt 0 ] && detail+="; ${notes[*]}"
if [ "$tests_bad" -eq 0 ] && [ ${#names[@]} -gt 0 ] && [ ${#notes[@]} -eq 0 ]; then
    row "(a) tests" ok "$detail ($(($(stamp) - t0)) s)"
else
    row "(a) tests" failed "$detail ($(($(stamp) - t0)) s)"
fi
grep -E '^(test .* FAILED|---- )' "$OUT/tests.log" | head -20

# ---- (b) kernel benchmarks ----------------------------------------------------------------
t0=$(stamp)
timeout "$T_BENCH" "$dcl" bench kernels --device cuda --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && [ -s "$OUT/bench.json" ]; then
    row "(b) bench" ok "dcl bench kernels: exit 0, bench.json $(wc -c <"$OUT/bench.json") bytes ($(($(stamp) - t0)) s)"
else
    row "(b) bench" failed "dcl bench kernels: exit $rc: $(grep -v '^\s*$' "$OUT/bench.log" | tail -1 | cut -c1-120)"
fi

# ---- (c) PyTorch parity (full width) and PyTorch eager timings ----------------------------
t0=$(stamp)
parity() {
    set -e
    "$dcl" init-checkpoint --model counter --width-mult 1 --seed 1 --out "$work/counter.safetensors"
    "$dcl" init-checkpoint --model localizer --width-mult 1 --seed 2 --out "$work/localizer.safetensors"
    local dev rc=0
    for dev in cuda cpu; do
        echo "-- dcl on $dev, PyTorch on $TORCH_DEVICE (TF32 off), full width, 2 images of 256x256"
        if "$dcl" export-io --counter "$work/counter.safetensors" \
            --localizer "$work/localizer.safetensors" --out "$work/io-$dev.safetensors" \
            --images 2 --size 256 --device "$dev"; then
            "$PY" scripts/torch_parity.py compare --io "$work/io-$dev.safetensors" \
                --counter "$work/counter.safetensors" --localizer "$work/localizer.safetensors" \
                --device "$TORCH_DEVICE" --tol "$TOL" --json "$work/parity-$dev.json" || rc=1
        else
            echo "FAIL dcl export-io --device $dev"
            rc=1
        fi
    done
    echo "-- PyTorch eager training steps"
    "$PY" scripts/torch_parity.py time --json "$work/time.json" || rc=1
    return $rc
}
# The timeout covers the whole part; `parity` runs in a subshell so `set -e` stays there.
export -f parity
export dcl work PY TOL TORCH_DEVICE
timeout "$T_PARITY" bash -c parity >"$OUT/parity.log" 2>&1
rc=$?
"$PY" - "$work" "$OUT/parity.json" <<'EOF' 2>>"$OUT/parity.log"
import json, os, sys
work, out = sys.argv[1:3]
merged = {}
for key in ("parity-cuda", "parity-cpu", "time"):
    p = os.path.join(work, key + ".json")
    if os.path.exists(p):
        merged[key] = json.load(open(p))
json.dump(merged, open(out, "w"), indent=1)
EOF
summ=$(
    "$PY" - "$OUT/parity.json" <<'EOF' 2>/dev/null
import json, sys
m = json.load(open(sys.argv[1]))
parts = []
for dev in ("cuda", "cpu"):
    r = m.get("parity-" + dev)
    if r:
        parts.append("dcl %s: " % dev + ", ".join(
            "%s rel %.1e" % (x["network"].split()[0], x["rel"]) for x in r["results"]))
    else:
        parts.append("dcl %s: no result" % dev)
t = m.get("time")
if t:
    ms = {(x["network"], x["step"], x["tf32"]): x["median_ms"] for x in t["rows"]}
    parts.append("torch fwd+bwd TF32 on: counter %.1f ms, localizer %.1f ms (off: %.1f, %.1f)" % (
        ms[("counter", "fwd+bwd", True)], ms[("localizer", "fwd+bwd", True)],
        ms[("counter", "fwd+bwd", False)], ms[("localizer", "fwd+bwd", False)]))
print("; ".join(parts))
EOF
)
if [ "$rc" -eq 0 ]; then
    row "(c) parity" ok "${summ:-see parity.log} ($(($(stamp) - t0)) s)"
else
    row "(c) parity" failed "exit $rc; ${summ:-see parity.log} ($(($(stamp) - t0)) s)"
fi

# ---- (d) short training run ---------------------------------------------------------------
t0=$(stamp)
data=shared/data/vgg
[ -d .device/data/vgg/train ] && data=.device/data/vgg
timeout "$T_TRAIN" "$dcl" train --model counter --data "$data/train" --val "$data/val" \
    --device cuda --epochs 2 --profile --out "$work/run" >"$OUT/train.log" 2>&1
rc=$?
metrics=$(find "$work/run" -name metrics.jsonl 2>/dev/null | head -1)
[ -n "$metrics" ] && { echo "-- metrics.jsonl"; cat "$metrics"; } >>"$OUT/train.log"
last=$(grep -E 'epoch +[0-9]+' "$OUT/train.log" | tail -1 | sed -E 's/ +/ /g')
if [ "$rc" -eq 0 ]; then
    row "(d) train" ok "${last:-no epoch line} (wall $(($(stamp) - t0)) s)"
else
    row "(d) train" failed "exit $rc: ${last:-$(grep -v '^\s*$' "$OUT/train.log" | tail -1 | cut -c1-140)}"
fi

# ---- (e) counting throughput ------------------------------------------------------------
t0=$(stamp)
counting() {
    set -e
    [ -s "$work/counter.safetensors" ] ||
        "$dcl" init-checkpoint --model counter --width-mult 1 --seed 1 --out "$work/counter.safetensors"
    [ -s "$work/localizer.safetensors" ] ||
        "$dcl" init-checkpoint --model localizer --width-mult 1 --seed 2 --out "$work/localizer.safetensors"
    "$dcl" data synth --out "$work/big" --n 1 --size 4096
    local c=(--counter "$work/counter.safetensors" --device cuda --quiet)
    echo "-- warm-up (NVRTC compiles or loads the kernels)"
    "$dcl" count "$data/val" --glob '*cell.png' "${c[@]}" >/dev/null
    # --quiet hides the bar; the timing line is printed unless stderr is quiet, so drop --quiet
    local v=(--counter "$work/counter.safetensors" --device cuda)
    echo "-- counter, VGG val 256x256"
    "$dcl" count "$data/val" --glob '*cell.png' "${v[@]}" 2>&1 >/dev/null | tail -1
    echo "-- counter + localizer, every output, VGG val 256x256"
    "$dcl" count "$data/val" --glob '*cell.png' "${v[@]}" --localizer "$work/localizer.safetensors" \
        --out "$work/count-out" 2>&1 >/dev/null | tail -1
    echo "-- counter, one 4096x4096 image"
    "$dcl" count "$work/big" --glob '*cell.png' "${v[@]}" 2>&1 >/dev/null | tail -1
}
export -f counting
export dcl work data
timeout "$T_COUNT" bash -c counting >"$OUT/count.log" 2>&1
rc=$?
summ=$(grep -E '^[0-9]+ images in ' "$OUT/count.log" | sed -E 's/^([0-9]+) images in ([0-9.]+)s \(([^)]*)\); networks busy [0-9.]+s \(([0-9]+)%.*/\1 in \2 s (\3, networks \4%)/' | paste -sd';' -)
if [ "$rc" -eq 0 ]; then
    row "(e) count" ok "${summ:-see count.log} ($(($(stamp) - t0)) s)"
else
    row "(e) count" failed "exit $rc: $(grep -v '^\s*$' "$OUT/count.log" | tail -1 | cut -c1-140)"
fi

# ---- (f) summary --------------------------------------------------------------------------
{
    echo
    echo "==== device-run summary ===="
    cat "$work/env.txt"
    printf '%s\n' "${rows[@]}"
} | tee "$OUT/summary.txt"
bad=$(printf '%s\n' "${rows[@]}" | awk '$3 == "failed"' | wc -l)
exit "$bad"
