#!/usr/bin/env bash
# Runs HERE, without a GPU: scripts/device-run.sh in its GPU mode (not --dry-run) against test
# doubles, so the code paths that otherwise first run on the GPU machine (the rows of every
# part, the sanitizer's and the tests' failure handling, the PyTorch step table) can be tried
# before a device call. Not a test of dcl: the doubles are
#   cuda_parity          the bundle's, with DCL_TEST_CUDA=1 turned into =host (host emulation)
#   dcl                  the bundle's, with --device cuda turned into cpu and the paper's sizes
#                        into tiny ones (256 -> 32, 4096 -> 256, width 1 -> 1/8, 3 training steps)
#   compute-sanitizer    runs the command; racecheck reports 3 planted errors (a failed row)
#   python3              FAKE_TORCH_PYTHON (a python with torch) with cuda turned into cpu;
#                        `torch_parity.py time` writes canned timings. Without it the parity
#                        part fails at the comparison (no torch), the rest still runs
#
#   scripts/device-fake-gpu.sh [--bundle DIR] [device-run.sh arguments...]
# Expected (about 100 s here): preflight ok; tests failed only by time-outs of steps:: tests
# (slow on the emulation; T_TEST=12); sanitizer failed by the planted racecheck errors; the
# rest ok, and the step table beside the canned PyTorch timings.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
bundle=$root/.device
if [ "${1:-}" = --bundle ]; then
    bundle=$(cd "$2" && pwd -P)
    shift 2
fi
if [ ! -x "$bundle/bin/dcl" ] || [ ! -x "$bundle/bin/cuda_parity" ]; then
    echo "device-fake-gpu: no bundle in $bundle (scripts/device-build.sh first)" >&2
    exit 2
fi
fake=$(mktemp -d /tmp/dcl-fake-gpu.XXXXXX)
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/bundle/bin" "$fake/path"
[ -d "$bundle/data" ] && ln -s "$bundle/data" "$fake/bundle/data"

cat >"$fake/bundle/bin/cuda_parity" <<EOF
#!/usr/bin/env bash
[ "\${DCL_TEST_CUDA:-}" = 1 ] && export DCL_TEST_CUDA=host
exec "$bundle/bin/cuda_parity" "\$@"
EOF

cat >"$fake/bundle/bin/dcl" <<EOF
#!/usr/bin/env python3
import os, sys
a, out, i = sys.argv[1:], [], 0
tiny = {"--size": {"256": "32", "4096": "256"}, "--width-mult": {"1": "0.125"}}
while i < len(a):
    x = a[i]
    if x == "--device" and a[i + 1] == "cuda":
        out += ["--device", "cpu"]; i += 2
    elif x in ("--reps", "--warmup"):
        i += 2
    elif x in tiny and i + 1 < len(a):
        out += [x, tiny[x].get(a[i + 1], a[i + 1])]; i += 2
    else:
        out.append(x); i += 1
if "--help" not in out:
    if out[:2] == ["bench", "kernels"]:
        out += ["--size", "32", "--batch", "2", "--width-mult", "0.125", "--reps", "1", "--warmup", "0"]
    elif out[:1] == ["train"]:
        out += ["--width-mult", "0.125", "--max-steps", "3", "--batch-size", "2"]
    elif out[:1] == ["init-checkpoint"] and "--width-mult" not in out:
        out += ["--width-mult", "0.125"]
os.execv("$bundle/bin/dcl", ["dcl"] + out)
EOF

cat >"$fake/path/compute-sanitizer" <<'EOF'
#!/usr/bin/env bash
case ${1:-} in
    --version) echo "compute-sanitizer test double"; exit 0 ;;
    --help) echo "  --print-limit arg  --destroy-on-device-error arg  --error-exitcode arg"; exit 0 ;;
esac
tool=memcheck
while [ "${1:0:2}" = -- ]; do [ "$1" = --tool ] && tool=$2; shift 2; done
echo "========= COMPUTE-SANITIZER ($tool, test double)"
"$@"
rc=$?
if [ "$tool" = racecheck ]; then echo "========= ERROR SUMMARY: 3 errors (planted)"; exit 86; fi
echo "========= ERROR SUMMARY: 0 errors"
exit "$rc"
EOF

torch_py=${FAKE_TORCH_PYTHON:-python3}
cat >"$fake/bundle/python3" <<EOF
#!/usr/bin/env bash
if [ "\${1:-}" = scripts/torch_parity.py ] && [ "\${2:-}" = time ]; then
    cat >"\$4" <<'JSON'
{"device": "test double", "torch": "canned", "cudnn": 0, "batch": 8, "size": 256, "rows": [
 {"network": "counter", "step": "fwd+bwd+adam", "tf32": false, "median_ms": 42.0, "mean_ms": 42.0},
 {"network": "localizer", "step": "fwd+bwd+adam", "tf32": false, "median_ms": 52.0, "mean_ms": 52.0},
 {"network": "counter", "step": "fwd+bwd+adam", "tf32": true, "median_ms": 22.0, "mean_ms": 22.0},
 {"network": "localizer", "step": "fwd+bwd+adam", "tf32": true, "median_ms": 32.0, "mean_ms": 32.0}]}
JSON
    echo "canned PyTorch timings (test double)"
    exit 0
fi
args=()
for x in "\$@"; do [ "\$x" = cuda ] && x=cpu; args+=("\$x"); done
exec "$torch_py" "\${args[@]}"
EOF
chmod +x "$fake/bundle/bin/"* "$fake/path/"* "$fake/bundle/python3"

PATH=$fake/path:$PATH PYTHON=$fake/bundle/python3 T_TEST=${T_TEST:-12} \
    OUT=${OUT:-/tmp/dcl-fake-gpu-out} DCL_DEVICE_WORK=/tmp/dcl-fake-gpu-work \
    scripts/device-run.sh --bundle "$fake/bundle" "$@"
