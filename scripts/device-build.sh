#!/usr/bin/env bash
# Runs HERE (the machine with Rust). Builds what the GPU machine runs, since it has no Rust:
# the release `dcl` and every test binary (`cargo test --release --no-run`, located through
# cargo's JSON messages), into .device/ (gitignored), which the device call carries.
# The CUDA kernels are embedded in the binaries (build.rs) and compiled there by NVRTC.
#
#   scripts/device-build.sh            then, on the device: scripts/device-run.sh
#
# .device/ holds:
#   bin/dcl, bin/<test name> (e.g. bin/cuda_parity; the crate's unit tests as bin/dcl-lib)
#   bin/paths.env   the absolute paths cargo baked into the tests (CARGO_MANIFEST_DIR,
#                   CARGO_BIN_EXE_dcl), so device-run.sh can make them resolve there
#   data/vgg/       a copy of the VGG cells (train/ and val/) unless ./shared/data/vgg is a
#                   real folder of this checkout (only such a folder travels; ../shared does not)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
dest=.device
shared_src=${DCL_SHARED:-../shared}
# What travels (working tree + carried paths) is limited to 64 MiB in all.
limit_mib=${DCL_CARRY_LIMIT_MIB:-56}

command -v python3 >/dev/null || { echo "device-build: python3 is needed to read cargo's JSON" >&2; exit 1; }
rm -rf "$dest/bin"
mkdir -p "$dest/bin"

echo "device-build: cargo build --release (dcl)" >&2
cargo build --release --bin dcl
meta=$(cargo metadata --format-version 1 --no-deps)
target_dir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta")
cp "$target_dir/release/dcl" "$dest/bin/dcl"

echo "device-build: cargo test --release --no-run" >&2
msgs=$(mktemp)
trap 'rm -f "$msgs"' EXIT
cargo test --release --no-run --message-format=json-render-diagnostics >"$msgs"
# One line per test executable: "<name> <path>". Unit tests of the library and of the binary
# share the crate's name, so they become dcl-lib and dcl-bin.
python3 - "$msgs" >"$dest/bin/tests.txt" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    t = m["target"]
    name = t["name"]
    kinds = t["kind"]
    if "lib" in kinds:
        name += "-lib"
    elif "bin" in kinds:
        name += "-bin"
    elif "bench" in kinds:
        continue
    print(name, m["executable"])
EOF
[ -s "$dest/bin/tests.txt" ] || { echo "device-build: cargo reported no test executables" >&2; exit 1; }
while read -r name path; do
    cp "$path" "$dest/bin/$name"
done <"$dest/bin/tests.txt"
cut -d' ' -f1 "$dest/bin/tests.txt" >"$dest/bin/tests.list"
rm "$dest/bin/tests.txt"

cat >"$dest/bin/paths.env" <<EOF
BAKED_MANIFEST_DIR=$root
BAKED_DCL=$target_dir/release/dcl
EOF

size_mib() { du -sm "$@" | awk '{s += $1} END {print s + 0}'; }
if [ "$(size_mib "$dest/bin")" -gt $((limit_mib - 12)) ]; then
    # Line tables make backtraces readable but cost megabytes per binary; symbols stay.
    echo "device-build: stripping debug info to fit the carry limit" >&2
    for f in "$dest"/bin/*; do
        [ -x "$f" ] && [ ! -L "$f" ] && strip --strip-debug "$f" 2>/dev/null || true
    done
fi

if [ -d shared/data/vgg/train ] && [ ! -L shared ] && [ ! -L shared/data ] && [ ! -L shared/data/vgg ]; then
    rm -rf "$dest/data"
    echo "device-build: data travels in ./shared/data/vgg" >&2
elif [ -d "$shared_src/data/vgg/train" ]; then
    rm -rf "$dest/data"
    mkdir -p "$dest/data/vgg"
    cp -r "$shared_src/data/vgg/train" "$shared_src/data/vgg/val" "$dest/data/vgg/"
    echo "device-build: copied $shared_src/data/vgg (train, val) into $dest/data/vgg" >&2
else
    echo "device-build: warning: no VGG data found (./shared/data/vgg or $shared_src/data/vgg); the training part will fail" >&2
fi

total=$(size_mib "$dest")
tree=$(git ls-files -co --exclude-standard -z | du -cm --files0-from=- 2>/dev/null | tail -1 | cut -f1)
if [ -d shared ]; then tree=$((tree + $(size_mib shared))); fi # ./shared travels too
echo "device-build: $dest is ${total} MiB (working tree ~${tree} MiB; 64 MiB may travel in all):" >&2
ls -la "$dest/bin" >&2
if [ $((total + tree)) -gt 64 ]; then
    echo "device-build: too large to travel; carry less (DCL_CARRY_LIMIT_MIB)" >&2
    exit 1
fi
echo "device-build: done. Carry '$dest' and run scripts/device-run.sh on the device." >&2
