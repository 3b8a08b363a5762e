#!/usr/bin/env bash
# Runs HERE (the machine with Rust). Builds the bundle that the GPU machine runs, since that
# machine has no Rust: only the two binaries scripts/device-run.sh runs, fully stripped, and a
# copy of the VGG cells for the training and counting parts.
#
#   scripts/device-build.sh                       # release build into .device/ (gitignored)
#                                                 # (cargo test --release --no-run --test cuda_parity)
#   scripts/device-build.sh --profile dev --dest target/device-dry   # what CI's dry run uses
#
# The bundle (DEST, default .device):
#   bin/dcl            the release `dcl` (train, count, bench, init-checkpoint, export-io)
#   bin/cuda_parity    the GPU parity test binary (tests/cuda_parity), run one test per process
#   data/vgg/          ../shared/data/vgg (train/ and val/): ../shared does not travel
#   manifest.txt       commit, profile, sizes, the glibc the binaries need, the test list
# The CUDA kernels are embedded in the binaries (build.rs) and compiled there by NVRTC.
#
# What travels to the device is the working tree (tracked and untracked-not-ignored files,
# ./shared if the checkout has one) plus the carried paths. This script fails when that would
# exceed DCL_TRAVEL_LIMIT_MIB (default 60: the device tool's own limit is 64 MiB, less room for
# files written into the tree between this build and the call).
# DCL_KEEP_SYMBOLS=1 keeps the symbol tables (readable backtraces, about 2 MiB more).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
dest=.device
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
        --dest) dest=${2:?--dest needs a folder}; shift 2 ;;
        -h | --help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
        *) echo "device-build: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) cargo_profile=(--release) ;;
    dev) cargo_profile=() ;;
    *) echo "device-build: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
shared_src=${DCL_SHARED:-../shared}
limit_mib=${DCL_TRAVEL_LIMIT_MIB:-60}
command -v python3 >/dev/null || { echo "device-build: python3 is needed to read cargo's JSON" >&2; exit 1; }

msgs=$(mktemp)
trap 'rm -f "$msgs"' EXIT
# One cargo call builds both: an integration test builds the crate's binary beside it. (A
# separate `cargo build` would resolve features without the dev-dependencies and rebuild part
# of the tree; after `cargo test`, as in CI, this call is a no-op.)
echo "device-build: cargo test ${cargo_profile[*]} --no-run --test cuda_parity (also builds the dcl binary)" >&2
cargo test "${cargo_profile[@]}" --no-run --test cuda_parity --message-format=json-render-diagnostics >"$msgs"
# The executables from cargo's own messages: the `dcl` bin and the cuda_parity test.
mapfile -t exes < <(python3 - "$msgs" <<'EOF'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if t["name"] == "dcl" and t["kind"] == ["bin"] and not m["profile"]["test"]:
        found["dcl"] = m["executable"]
    elif t["name"] == "cuda_parity" and m["profile"]["test"]:
        found["cuda_parity"] = m["executable"]
for k in ("dcl", "cuda_parity"):
    print(found.get(k, ""))
EOF
)
for i in 0 1; do
    if [ -z "${exes[$i]:-}" ] || [ ! -x "${exes[$i]}" ]; then
        echo "device-build: cargo reported no executable for $([ "$i" = 0 ] && echo dcl || echo cuda_parity)" >&2
        exit 1
    fi
done

rm -rf "${dest:?}/bin"
mkdir -p "$dest/bin"
strip_mode=--strip-all
[ "${DCL_KEEP_SYMBOLS:-0}" = 1 ] && strip_mode=--strip-debug
strip "$strip_mode" -o "$dest/bin/dcl" "${exes[0]}"
strip "$strip_mode" -o "$dest/bin/cuda_parity" "${exes[1]}"

# Data for the training and counting parts. A real ./shared/data/vgg of this checkout travels
# by itself; otherwise copy ../shared/data/vgg (the device sees only this checkout).
rm -rf "${dest:?}/data"
if [ -d shared/data/vgg/train ] && [ ! -L shared ] && [ ! -L shared/data ] && [ ! -L shared/data/vgg ]; then
    data_note="./shared/data/vgg travels with the checkout"
elif [ -d "$shared_src/data/vgg/train" ] && [ -d "$shared_src/data/vgg/val" ]; then
    mkdir -p "$dest/data/vgg"
    cp -r "$shared_src/data/vgg/train" "$shared_src/data/vgg/val" "$dest/data/vgg/"
    data_note="copied $shared_src/data/vgg (train $(find "$dest/data/vgg/train" -name '*cell.png' | wc -l), val $(find "$dest/data/vgg/val" -name '*cell.png' | wc -l) images)"
else
    data_note="no VGG data ($shared_src/data/vgg missing): the training part will fail, counting uses the test fixtures"
    echo "device-build: warning: $data_note" >&2
fi

kib() { du -sk "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
tree_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
[ -d shared ] && [ ! -L shared ] && tree_kib=$((tree_kib + $(kib shared)))
bin_kib=$(kib "$dest/bin")
data_kib=0
[ -d "$dest/data" ] && data_kib=$(kib "$dest/data")
total_kib=$((tree_kib + bin_kib + data_kib))
glibc=$({ objdump -T "$dest/bin/dcl" "$dest/bin/cuda_parity" 2>/dev/null || true; } | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)

{
    echo "commit      $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built       $(date -u +%FT%TZ) on $(uname -m), profile $profile, strip $strip_mode"
    echo "needs       ${glibc:-glibc ?} or newer on the device"
    echo "bin         $(mib "$bin_kib") MiB: dcl $(mib "$(kib "$dest/bin/dcl")"), cuda_parity $(mib "$(kib "$dest/bin/cuda_parity")")"
    echo "data        $(mib "$data_kib") MiB: $data_note"
    echo "travels     $(mib "$total_kib") MiB = working tree $(mib "$tree_kib") + bin + data (limit $limit_mib MiB)"
    echo "tests       $("$dest/bin/cuda_parity" --list 2>/dev/null | grep -c ': test$')"
} >"$dest/manifest.txt"
sed 's/^/device-build: /' "$dest/manifest.txt" >&2
if [ "$total_kib" -gt $((limit_mib * 1024)) ]; then
    echo "device-build: too large to travel: $(mib "$total_kib") MiB > $limit_mib MiB" >&2
    exit 1
fi
echo "device-build: done; carry '$dest' and run scripts/device-run.sh on the device (scripts/README.md)" >&2
