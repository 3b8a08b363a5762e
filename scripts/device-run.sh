#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with the bundle of scripts/device-build.sh
# carried (that machine has CUDA, PyTorch and python3 but no Rust). One call, at most
# T_TOTAL seconds (default: the sum of the part caps below, 405 s), most important part first:
#
#   part        cap (s, env)        what
#   preflight   T_PREFLIGHT=20      find libcuda, libnvrtc (+ builtins), libcublas (+ Lt) on the
#                                   system or in the pip wheels, print them; the two device::
#                                   parity tests (NVRTC compile + launch, copies, cuBLAS). On
#                                   failure: one line with what was found, and the run stops
#   tests       T_TESTS=85          every tests/cuda_parity test in its own process
#                                   (DCL_TEST_CUDA=1, at most T_TEST=30 s each), then each failed
#                                   one again with CUDA_LAUNCH_BLOCKING=1
#   sanitizer   T_SANITIZER=60      compute-sanitizer memcheck, then racecheck, over the op tests
#                                   (all but steps::), one process per tool
#   bench-fp32  T_BENCH_FP32=55     dcl bench kernels --device cuda --fp32 (every conv version)
#   bench-tf32  T_BENCH_TF32=40     dcl bench kernels --device cuda --tf32 --reps 10
#   parity      T_PARITY=70         full-width counter + localizer: dcl export-io on cuda and on cpu,
#                                   both against PyTorch on the GPU (TF32 off, PARITY_TOL=1e-4);
#                                   PyTorch's GMP op (grid_sample composition, fwd+bwd) beside
#                                   dcl's GMP bench rows; PyTorch eager training-step timings
#   train       T_TRAIN=40          dcl train --model counter on the VGG cells, 2 epochs, --profile
#   count       T_COUNT=35          dcl count throughput: VGG val with the counter, with counter +
#                                   localizer and every output, one 4096x4096 synthetic image
#
# Each part's row is appended to $OUT/summary.txt as soon as it is known, and the logs archive
# is refreshed after every part, so a run cut short still brings back what it had. Files in
# $OUT (at most 8 come back): summary.txt, tests.tsv, bench-fp32.json, bench-tf32.json,
# parity.json, logs.tar.gz.
#
#   scripts/device-run.sh [--bundle DIR] [--parts a,b,...] [--dry-run]
#     --bundle DIR  the carried bundle (default .device)
#     --parts LIST  only these parts (the preflight always runs), e.g. --parts tests,sanitizer
#     --dry-run     on a machine without a GPU (CI): the whole script runs, every GPU part is
#                   reported as skipped, after its command lines were checked (`--help` appended
#                   to the exact command, so clap rejects a broken flag) and a tiny version ran
#                   on the CPU or the host emulation of the device (`cuda-host`); exits 0 unless
#                   something the script depends on is broken
# Exit status: the number of failed parts (the preflight's failure counts as one; it stops).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$(pwd -P)

dry=0
bundle=.device
only=
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1; shift ;;
        --bundle) bundle=${2:?--bundle needs a folder}; shift 2 ;;
        --parts) only=${2:?--parts needs a list}; shift 2 ;;
        -h | --help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
        *) echo "device-run: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $bundle in /*) ;; *) bundle=$root/$bundle ;; esac
for p in ${only//,/ }; do
    case $p in
        tests | sanitizer | bench-fp32 | bench-tf32 | parity | train | count) ;;
        *) echo "device-run: --parts: unknown part $p (tests, sanitizer, bench-fp32, bench-tf32, parity, train, count)" >&2; exit 2 ;;
    esac
done

T_PREFLIGHT=${T_PREFLIGHT:-20}
T_TESTS=${T_TESTS:-85}
T_SANITIZER=${T_SANITIZER:-60}
T_BENCH_FP32=${T_BENCH_FP32:-55}
T_BENCH_TF32=${T_BENCH_TF32:-40}
T_PARITY=${T_PARITY:-70}
T_TRAIN=${T_TRAIN:-40}
T_COUNT=${T_COUNT:-35}
T_TEST=${T_TEST:-30}
caps_sum=$((T_PREFLIGHT + T_TESTS + T_SANITIZER + T_BENCH_FP32 + T_BENCH_TF32 + T_PARITY + T_TRAIN + T_COUNT))
T_TOTAL=${T_TOTAL:-$caps_sum}
# The dry run's tiny runs are on the CPU or the host emulation, far slower than a GPU: there
# the caps (x4) only guard against a hang.
scale=1
[ "$dry" = 1 ] && scale=4 T_TEST=${T_TEST_DRY:-120}
T_TOTAL=$((T_TOTAL * scale))
# What the dry run runs for real on the host emulation (cuda-host): the preflight's tests and
# the parity tests matching DRY_TESTS (a regex; default a quick few, `.` for every op test);
# DRY_FULL=1 also runs every op test and export-io there (slow: each kernel file is compiled
# as C++ once, then cached).
DRY_FULL=${DRY_FULL:-0}
DRY_TESTS=${DRY_TESTS:-^(elementwise|loss::window|gmp::gmp_three)}
[ "$DRY_FULL" = 1 ] && DRY_TESTS=.
TOL=${PARITY_TOL:-1e-4}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1

OUT=${OUT:-/tmp/dcl-device-out}
mkdir -p "$OUT"
rm -f "$OUT"/summary.txt "$OUT"/tests.tsv "$OUT"/bench-fp32.json "$OUT"/bench-tf32.json \
    "$OUT"/parity.json "$OUT"/logs.tar.gz
work=${DCL_DEVICE_WORK:-/tmp/dcl-device}
case $work in /tmp/?* | "$root"/target/?*) rm -rf "$work" ;; *) [ -e "$work" ] && { echo "device-run: DCL_DEVICE_WORK=$work exists and is not under /tmp or target/: not removing it" >&2; exit 2; } ;; esac
mkdir -p "$work/logs/tests" "$work/logs/sanitizer" "$work/lib"
logs=$work/logs
# On the GPU: a fresh kernel cache shared by every part (each kernel file compiled once). The
# dry run keeps the usual cache, where the host emulation's compiled kernels stay between runs.
[ "$dry" = 1 ] || export DCL_KERNEL_CACHE=$work/kernel-cache

dcl=$bundle/bin/dcl
parity_bin=$bundle/bin/cuda_parity
summary=$OUT/summary.txt
start=$(date +%s)
failed_parts=0

now() { date +%s; }
elapsed() { echo $(($(now) - start)); }
# Seconds left before the end of the current part (and never past the whole run's end).
left() {
    local a=$((part_end - $(now))) b=$((start + T_TOTAL - $(now)))
    [ "$a" -lt "$b" ] && echo "$a" || echo "$b"
}
archive() {
    tar -czf "$OUT/logs.tar.gz.part" -C "$work" logs 2>/dev/null && mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
}
say() { echo "$*" | tee -a "$summary"; }
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
part_begin() { # NAME CAP
    part=$1 part_t0=$(now) part_end=$(($(now) + $2 * scale))
    echo "== $part (cap $(($2 * scale)) s, $(elapsed) s into the run)" >&2
}
# row STATUS DETAIL: the part's summary line, appended at once; the logs archive refreshed.
row() {
    local status=$1 detail=$2
    [ "$status" = failed ] && failed_parts=$((failed_parts + 1))
    say "$(printf '%-11s %-8s %4d s  %s' "$part" "$status" "$(($(now) - part_t0))" "$detail")"
    archive
}
# capped SECONDS LOG CMD...: CMD with a time limit, output appended to LOG; 124/137 on time-out.
capped() {
    local s=$1 log=$2
    shift 2
    echo "\$ $*" >>"$log"
    if [ "$s" -lt 2 ]; then
        echo "(not started: no time left)" >>"$log"
        return 124
    fi
    timeout -k 5 "$s" "$@" >>"$log" 2>&1
}
# The last meaningful line of a log, for a row.
last_line() { grep -v -e '^\s*$' -e '^\$ ' "$1" 2>/dev/null | tail -1 | cut -c1-160; }
# check_flags LOG CMD...: CMD with --help appended must parse (clap rejects unknown flags and
# bad values before it prints help). Returns non-zero and logs the error when it does not.
check_flags() {
    local log=$1
    shift
    echo "\$ $* --help  (flag check)" >>"$log"
    if "$@" --help >/dev/null 2>"$work/flags.err"; then
        return 0
    fi
    cat "$work/flags.err" >>"$log"
    echo "flags rejected: $* ($(head -1 "$work/flags.err" | cut -c1-120))"
    return 1
}

# ---- header ---------------------------------------------------------------------------------
{
    echo "dcl device-run $(date -u +%FT%TZ), $([ "$dry" = 1 ] && echo "DRY RUN (no GPU: GPU parts skipped)" || echo GPU run), in $root"
    echo "caps: preflight $T_PREFLIGHT, tests $T_TESTS, sanitizer $T_SANITIZER, bench-fp32 $T_BENCH_FP32, bench-tf32 $T_BENCH_TF32, parity $T_PARITY, train $T_TRAIN, count $T_COUNT = $caps_sum s; whole run at most $T_TOTAL s"
    if [ -f "$bundle/manifest.txt" ]; then sed 's/^/bundle: /' "$bundle/manifest.txt"; fi
} | tee -a "$summary"
chmod +x "$dcl" "$parity_bin" 2>/dev/null # in case the copy lost the modes
if [ ! -x "$dcl" ] || [ ! -x "$parity_bin" ]; then
    part=preflight part_t0=$(now)
    row failed "bundle incomplete: $dcl or $parity_bin missing; run scripts/device-build.sh here and carry the bundle"
    exit 1
fi
{
    echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    if command -v nvidia-smi >/dev/null; then
        echo "gpu: $(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader 2>&1 | head -2 | paste -sd';')"
    else
        echo "gpu: no nvidia-smi"
    fi
} | tee -a "$summary" >"$logs/env.txt"
TEST_CUDA=1
host_ok=1
if [ "$dry" = 1 ]; then
    TEST_CUDA=host
    # The host emulation compiles the kernels with a C++17 compiler; without one its runs are
    # left out (noted in the rows), not failed.
    "${CXX:-c++}" --version >/dev/null 2>&1 || host_ok=0
fi
mapfile -t all_tests < <("$parity_bin" --list 2>"$work/list.err" | sed -n 's/: test$//p')
# The op tests first, then whole training steps (heavier, and the op tests localise a fault).
op_tests=() step_tests=()
for t in "${all_tests[@]}"; do
    if [[ $t == steps::* ]]; then step_tests+=("$t"); else op_tests+=("$t"); fi
done
all_tests=("${op_tests[@]}" "${step_tests[@]}")

# ---- preflight ------------------------------------------------------------------------------
part_begin preflight "$T_PREFLIGHT"
plog=$logs/preflight.log
site_dirs() {
    timeout 10 "$PY" -c 'import site, sysconfig
seen = []
for p in site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()["purelib"]]:
    if p not in seen:
        seen.append(p)
        print(p)' 2>/dev/null
}
# Directories that may hold CUDA libraries, most preferred first, each once.
candidate_dirs() {
    {
        tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}"
        ldconfig -p 2>/dev/null | awk -F' => ' '/lib(cuda|nvrtc|cublas)/ {print $2}' | xargs -r -n1 dirname
        printf '%s\n' /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib
        printf '%s\n' /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib
        printf '%s\n' /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib
        local sp
        while read -r sp; do
            printf '%s\n' "$sp"/nvidia/cu13/lib "$sp"/nvidia/*/lib "$sp"/torch/lib
        done < <(site_dirs)
    } | awk 'NF && !seen[$0]++' | while read -r d; do [ -d "$d" ] && echo "$d"; done
}
mapfile -t dirs < <(candidate_dirs)
# find_lib FILE [COMPANION_GLOB]: sets found_dir to the first candidate folder holding FILE (and
# a file matching COMPANION_GLOB beside it; compat/ and stubs/ folders only when no other has
# it) and found_all to every folder holding FILE.
find_lib() {
    local file=$1 comp=${2:-} d fallback=
    found_dir='' found_all=''
    for d in "${dirs[@]}"; do
        [ -e "$d/$file" ] || continue
        found_all+="${found_all:+ }$d"
        if [ -n "$comp" ] && ! compgen -G "$d/$comp" >/dev/null; then continue; fi
        case $d in
            */compat | */compat/* | */stubs) [ -z "$fallback" ] && fallback=$d ;;
            *) [ -z "$found_dir" ] && found_dir=$d ;;
        esac
    done
    [ -z "$found_dir" ] && found_dir=$fallback
    [ -z "$found_all" ] && found_all=none
    return 0
}
find_lib libcuda.so.1
cuda_dir=$found_dir cuda_all=$found_all
find_lib libnvrtc.so.13 'libnvrtc-builtins.so.13*'
nvrtc_dir=$found_dir nvrtc_all=$found_all
find_lib libcublas.so.13 'libcublasLt.so.13*'
cublas_dir=$found_dir cublas_all=$found_all
# describe_lib FILE DIR ALL: the file chosen (its real name), or where it was seen.
describe_lib() {
    if [ -n "$2" ]; then
        echo "$2/$(basename "$(readlink -f "$2/$1")")"
    else
        echo "MISSING (seen in: $3)"
    fi
}
found="libcuda $(describe_lib libcuda.so.1 "$cuda_dir" "$cuda_all"); libnvrtc $(describe_lib libnvrtc.so.13 "$nvrtc_dir" "$nvrtc_all")"
[ -n "$nvrtc_dir" ] && found+=" + $(basename "$(compgen -G "$nvrtc_dir/libnvrtc-builtins.so.13*" | head -1)")"
found+="; libcublas $(describe_lib libcublas.so.13 "$cublas_dir" "$cublas_all")"
{
    echo "candidate library folders, in order:"
    printf '  %s\n' "${dirs[@]}"
    echo "chosen: $found"
} >>"$plog"
# cudarc tries the unversioned names first: a private folder of links, first on the path, makes
# the chosen files the ones loaded, whatever else the loader's path holds.
lib=$work/lib
link_all() { local f; for f in "$@"; do [ -e "$f" ] && ln -sf "$f" "$lib/"; done; }
if [ -n "$cuda_dir" ]; then link_all "$cuda_dir"/libcuda.so.1; ln -sf "$cuda_dir/libcuda.so.1" "$lib/libcuda.so"; fi
if [ -n "$nvrtc_dir" ]; then
    link_all "$nvrtc_dir"/libnvrtc.so.13* "$nvrtc_dir"/libnvrtc-builtins.so.13*
    ln -sf "$nvrtc_dir/libnvrtc.so.13" "$lib/libnvrtc.so"
fi
if [ -n "$cublas_dir" ]; then
    link_all "$cublas_dir"/libcublas.so.13* "$cublas_dir"/libcublasLt.so.13*
    ln -sf "$cublas_dir/libcublas.so.13" "$lib/libcublas.so"
    ln -sf "$cublas_dir/libcublasLt.so.13" "$lib/libcublasLt.so"
fi
ldp=$lib
for d in "$cuda_dir" "$nvrtc_dir" "$cublas_dir"; do
    [ -n "$d" ] && [[ ":$ldp:" != *":$d:"* ]] && ldp+=:$d
done
ldp+=${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH for dcl and cuda_parity: $ldp" >>"$plog"
# Only our two binaries get this path (through wrappers): PyTorch keeps the libraries it was
# built with.
mkdir -p "$work/bin"
for b in dcl cuda_parity; do
    printf '#!/usr/bin/env bash\nLD_LIBRARY_PATH=%q exec %q "$@"\n' "$ldp" "$bundle/bin/$b" >"$work/bin/$b"
    chmod +x "$work/bin/$b"
done
dcl=$work/bin/dcl parity_bin=$work/bin/cuda_parity
say "libraries: $found"
pre_tests=()
for t in "${all_tests[@]}"; do [[ $t == device::* ]] && pre_tests+=("$t"); done
[ ${#pre_tests[@]} -eq 0 ] && [ ${#all_tests[@]} -gt 0 ] && pre_tests=("${all_tests[0]}")
pre_ok=0
# Both binaries must start here at all (a glibc older than the manifest's would stop them).
if ! dcl_version=$("$dcl" --version 2>&1); then
    pre_msg="$bundle/bin/dcl does not start: $(head -1 <<<"$dcl_version" | cut -c1-160)"
elif [ ${#all_tests[@]} -eq 0 ]; then
    pre_msg="$bundle/bin/cuda_parity --list names no tests: $(head -1 "$work/list.err" | cut -c1-160)"
elif [ "$host_ok" = 0 ]; then
    pre_msg="no C++ compiler (${CXX:-c++}) for the host emulation: tiny run left out"
    pre_ok=1
else
    LD_DEBUG=libs LD_DEBUG_OUTPUT=$logs/ld-debug DCL_TEST_CUDA=$TEST_CUDA \
        capped "$(left)" "$plog" "$parity_bin" --exact "${pre_tests[@]}" --nocapture --test-threads=1
    rc=$?
    loaded=$(cat "$logs"/ld-debug.* 2>/dev/null | sed -nE 's/.*calling init: (.*lib(cuda|nvrtc|nvrtc-builtins|cublas|cublasLt)\.so[^ ]*).*/\1/p' |
        sort -u | while read -r f; do readlink -f "$f"; done | paste -sd' ')
    rm -f "$logs"/ld-debug.*
    [ -n "$loaded" ] && echo "loaded: $loaded" >>"$plog"
    devline=$(grep -m1 -oE '[a-z_]+: cuda(:[0-9]+|-host) .*' "$plog" | sed -E 's/^[a-z_]+: //')
    if [ "$rc" -eq 0 ] && grep -q "test result: ok. ${#pre_tests[@]} passed" "$plog"; then
        pre_ok=1
        pre_msg="${devline:-device ?}; ${pre_tests[*]} passed${loaded:+; loaded $loaded}"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        pre_msg="${pre_tests[*]} did not finish in the cap (exit $rc); last: $(last_line "$plog")"
    else
        pre_msg="${pre_tests[*]} failed (exit $rc): $(grep -m1 -A1 'panicked at' "$plog" | tail -1 | cut -c1-160)${devline:+; device $devline}"
    fi
fi
if [ "$dry" = 1 ]; then
    if [ "$pre_ok" = 1 ]; then
        row skipped "dry run: the library search ran (above); $([ "$host_ok" = 1 ] && echo "the tiny run passed on cuda-host: ")$pre_msg"
    else
        row failed "dry run: the tiny run failed on cuda-host: $pre_msg"
    fi
elif [ "$pre_ok" = 1 ]; then
    row ok "$pre_msg"
else
    row failed "STOP: $pre_msg; found $found"
    say "stopped after the preflight ($(elapsed) s); logs in logs.tar.gz (preflight.log)"
    exit 1
fi

# The count part's large synthetic image is made now, on the CPU, while the GPU tests run
# (not during the benchmarks, which it would disturb); the count part waits for it.
big=4096
[ "$dry" = 1 ] && big=256
synth_pid=
if wanted count; then
    timeout 120 nice -n 10 "$dcl" data synth --out "$work/big" --n 1 --size "$big" >"$logs/synth.log" 2>&1 &
    synth_pid=$!
fi

# ---- tests: each GPU parity test in its own process --------------------------------------
if wanted tests; then
    part_begin tests "$T_TESTS"
    printf 'test\tstatus\tseconds\tblocking rerun\tfirst failure\n' >"$OUT/tests.tsv"
    # one_test NAME LOG [ENV=V...]: sets res (pass, fail N, timeout, none, not run) and secs.
    one_test() {
        local name=$1 log=$2 cap t0
        shift 2
        cap=$(left)
        [ "$cap" -gt "$T_TEST" ] && cap=$T_TEST
        t0=$(now)
        if [ "$cap" -lt 2 ]; then
            res="not run" secs=0
            return
        fi
        env DCL_TEST_CUDA="$TEST_CUDA" "$@" \
            timeout -k 5 "$cap" "$parity_bin" --exact "$name" --nocapture --test-threads=1 >"$log" 2>&1
        local rc=$?
        secs=$(($(now) - t0))
        if [ "$rc" -eq 0 ] && grep -q 'test result: ok. 1 passed' "$log"; then
            res=pass
        elif [ "$rc" -eq 0 ]; then
            res=none # ran nothing: the name is gone
        elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            res=timeout
        else
            res="fail $rc"
        fi
    }
    first_failure() { grep -m1 -A1 'panicked at' "$1" 2>/dev/null | tail -1 | tr '\t' ' ' | cut -c1-200; }
    passed=0 bad=() skipped_tests=() notrun=()
    declare -A status=()
    for t in "${all_tests[@]}"; do
        if [ "$dry" = 1 ] && { [ "$host_ok" = 0 ] || [[ $t == steps::* ]] || ! [[ $t =~ $DRY_TESTS ]]; }; then
            skipped_tests+=("$t")
            printf '%s\tskipped\t0\t\tdry run (DRY_TESTS=%s; steps:: are too slow on the host emulation%s)\n' \
                "$t" "$DRY_TESTS" "$([ "$host_ok" = 0 ] && echo '; no C++ compiler')" >>"$OUT/tests.tsv"
            continue
        fi
        one_test "$t" "$logs/tests/$t.log"
        status[$t]=$res
        case $res in
            pass) passed=$((passed + 1)) ;;
            "not run") notrun+=("$t") ;;
            *) bad+=("$t") ;;
        esac
        [ "$res" = pass ] || [ "$res" = "not run" ] || echo "   $t: $res" >&2
        [ "$res" = "not run" ] || printf '%s\t%s\t%s\t\t%s\n' "$t" "$res" "$secs" "$(first_failure "$logs/tests/$t.log")" >>"$OUT/tests.tsv"
    done
    for t in "${notrun[@]}"; do printf '%s\tnot run\t0\t\tno time left in the part\n' "$t" >>"$OUT/tests.tsv"; done
    # A failed test again with every launch synchronous, so that a fault names its launch; a
    # time-out is not rerun (it would only spend its cap again).
    reruns=()
    for t in "${bad[@]}"; do
        why=$(first_failure "$logs/tests/$t.log")
        if [ "${status[$t]}" = timeout ]; then
            reruns+=("$t: timeout after $T_TEST s, not rerun")
            continue
        fi
        one_test "$t" "$logs/tests/$t.blocking.log" CUDA_LAUNCH_BLOCKING=1
        reruns+=("$t: ${status[$t]}${why:+ ($why)}, CUDA_LAUNCH_BLOCKING=1 rerun: $res")
        printf '%s\t%s\t%s\t%s\t%s\n' "$t" "rerun" "$secs" "$res" "$(first_failure "$logs/tests/$t.blocking.log")" >>"$OUT/tests.tsv"
    done
    ran=$((passed + ${#bad[@]}))
    detail="$passed/$ran passed"
    [ ${#skipped_tests[@]} -gt 0 ] && detail+=", ${#skipped_tests[@]} skipped"
    [ ${#notrun[@]} -gt 0 ] && detail+=", ${#notrun[@]} not run (time): ${notrun[*]}"
    if [ ${#reruns[@]} -gt 0 ]; then
        detail+="; FAILED: $(printf '%s; ' "${reruns[@]}")"
        detail=${detail%; }
    fi
    detail+=" (tests.tsv)"
    if [ ${#all_tests[@]} -eq 0 ]; then
        row failed "$parity_bin --list names no tests"
    elif [ ${#bad[@]} -gt 0 ]; then
        row failed "$detail"
    elif [ "$dry" = 1 ]; then
        if [ "$host_ok" = 1 ]; then
            row skipped "dry run: tests matching DRY_TESTS ran on cuda-host, each in its own process: $detail"
        else
            row skipped "dry run: no C++ compiler for the host emulation, no test run: $detail"
        fi
    elif [ ${#notrun[@]} -gt 0 ]; then
        row partial "$detail"
    else
        row ok "$detail"
    fi
fi

# ---- sanitizer: compute-sanitizer memcheck and racecheck over the op tests ---------------
# One process per tool over every op test (a sanitizer's start and each context under it cost
# seconds; the tests part already isolates each test). memcheck kills only the faulting kernel
# (--destroy-on-device-error kernel), so one fault does not fail the tests after it.
if wanted sanitizer; then
    part_begin sanitizer "$T_SANITIZER"
    slog=$logs/sanitizer.log
    san=$(command -v compute-sanitizer 2>/dev/null)
    if [ -z "$san" ]; then
        for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
            /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
            [ -x "$c" ] && { san=$c; break; }
        done
    fi
    [ -z "$san" ] && san=$(find /usr/local /opt -maxdepth 6 -name compute-sanitizer -type f -perm -u+x 2>/dev/null | head -1)
    san_filter=(--skip steps::)
    if [ "$dry" = 1 ]; then
        echo "would run: ${san:-compute-sanitizer} --tool memcheck|racecheck --error-exitcode 86 $parity_bin ${san_filter[*]} --nocapture --test-threads=1" >>"$slog"
        row skipped "dry run: compute-sanitizer ${san:-not found here}; memcheck and racecheck over ${#op_tests[@]} op tests"
    elif [ -z "$san" ]; then
        row failed "compute-sanitizer not found (PATH, /usr/local/cuda*, /opt/nvidia)"
    else
        { echo "$san"; timeout 10 "$san" --version; } >>"$slog" 2>&1
        # Only the options this version knows (an unknown one would stop it at once).
        san_help=$(timeout 10 "$san" --help 2>&1)
        san_args=(--error-exitcode 86)
        [[ $san_help == *--print-limit* ]] && san_args+=(--print-limit 20)
        san_parts=() san_bad=0 san_partial=0
        for tool in memcheck racecheck; do
            # memcheck gets 7/12 of the part, racecheck what is left.
            cap=$(left)
            [ "$tool" = memcheck ] && cap=$((cap * 7 / 12))
            extra=()
            [ "$tool" = memcheck ] && [[ $san_help == *--destroy-on-device-error* ]] && extra=(--destroy-on-device-error kernel)
            log=$logs/sanitizer/$tool.log
            LD_LIBRARY_PATH=$ldp DCL_TEST_CUDA=1 capped "$cap" "$log" "$san" --tool "$tool" "${san_args[@]}" \
                "${extra[@]}" "$bundle/bin/cuda_parity" "${san_filter[@]}" --nocapture --test-threads=1
            rc=$?
            errs=$(grep -m1 'ERROR SUMMARY' "$log" | sed -E 's/.*ERROR SUMMARY: //')
            res=$(grep -m1 '^test result:' "$log" | sed -E 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 passed, \2 failed/')
            failed_names=$(sed -n '/^failures:$/,/^test result/p' "$log" | grep -E '^    [a-z_0-9]+::' | sed 's/^ *//' | paste -sd' ')
            p="$tool: "
            case $rc in
                0) p+="${res:-?}, ${errs:-no error summary}" ;;
                124 | 137)
                    p+="not finished in $cap s (stopped in $(grep -oE '^test [^ ]+' "$log" | tail -1 | cut -c6-))"
                    san_partial=1 ;;
                86) p+="${errs:-errors}; ${res:-?}${failed_names:+ ($failed_names)}"; san_bad=1 ;;
                *) p+="exit $rc, ${res:-no test result}${failed_names:+ ($failed_names)}${errs:+, $errs}: $(last_line "$log")"; san_bad=1 ;;
            esac
            echo "$p" >>"$slog"
            san_parts+=("$p")
        done
        detail=$(printf '%s; ' "${san_parts[@]}")
        detail="${detail%; } (${#op_tests[@]} op tests, one process per tool)"
        if [ "$san_bad" = 1 ]; then
            row failed "$detail"
        elif [ "$san_partial" = 1 ]; then
            row partial "$detail"
        else
            row ok "$detail"
        fi
    fi
fi

# ---- bench: dcl bench kernels, FP32 then TF32 --------------------------------------------
bench_part() { # NAME CAP JSON TF32(0|1)
    # Convolutions default to TF32 on Ampere and later: the FP32 run asks for strict FP32.
    local name=$1 cap=$2 json=$3 tf32=(--fp32)
    [ "$4" = 1 ] && tf32=(--tf32)
    part_begin "$name" "$cap"
    local log=$logs/$name.log
    local cmd=("$dcl" bench kernels --device cuda "${tf32[@]}" --json "$json")
    # TF32 second, with fewer reps: the FP32 run has the full figures.
    [ "$4" = 1 ] && cmd+=(--reps 10 --warmup 2)
    if [ "$dry" = 1 ]; then
        local msg rc tiny=$work/$name-cpu.json
        if ! msg=$(check_flags "$log" "${cmd[@]}"); then
            row failed "dry run: $msg"
            return
        fi
        # A tiny CPU run gives the summary parser the real JSON layout.
        capped "$(left)" "$log" "$dcl" bench kernels --device cpu "${tf32[@]}" --size 32 --batch 2 \
            --width-mult 0.125 --reps 1 --warmup 0 --json "$tiny"
        rc=$?
        if [ "$rc" -eq 0 ]; then
            row skipped "dry run: flags checked; tiny CPU run parsed: $("$PY" scripts/device_summary.py bench "$tiny")"
        else
            row failed "dry run: the tiny CPU bench failed (exit $rc): $(last_line "$log")"
        fi
        return
    fi
    capped "$(left)" "$log" "${cmd[@]}"
    local rc=$?
    if [ "$rc" -eq 0 ] && [ -s "$json" ]; then
        row ok "$("$PY" scripts/device_summary.py bench "$json")"
    else
        row failed "exit $rc$([ "$rc" = 124 ] && echo ' (time)'): $(last_line "$log")"
    fi
}
if [ "$dry" = 1 ]; then
    bench32=$work/bench-fp32-cpu.json bench_tf=$work/bench-tf32-cpu.json
else
    bench32=$OUT/bench-fp32.json bench_tf=$OUT/bench-tf32.json
fi
wanted bench-fp32 && bench_part bench-fp32 "$T_BENCH_FP32" "$OUT/bench-fp32.json" 0
wanted bench-tf32 && bench_part bench-tf32 "$T_BENCH_TF32" "$OUT/bench-tf32.json" 1

# ---- parity: both networks against PyTorch on the GPU, and PyTorch eager timings ---------
ckpt_c=$work/counter.safetensors
ckpt_l=$work/localizer.safetensors
make_checkpoints() { # LOG WIDTH
    [ -s "$ckpt_c" ] || capped "$(left)" "$1" "$dcl" init-checkpoint --model counter --width-mult "$2" --seed 1 --out "$ckpt_c" || return 1
    [ -s "$ckpt_l" ] || capped "$(left)" "$1" "$dcl" init-checkpoint --model localizer --width-mult "$2" --seed 2 --out "$ckpt_l" || return 1
}
if [ "$dry" = 1 ]; then
    W=0.125 SIZE=32 IMAGES=1 torch_dev=cpu export_devs=(cpu)
    [ "$DRY_FULL" = 1 ] && export_devs=(cuda-host cpu)
else
    W=1 SIZE=256 IMAGES=2 torch_dev=cuda export_devs=(cuda cpu)
fi
if wanted parity; then
    part_begin parity "$T_PARITY"
    log=$logs/parity.log
    pbad=()
    make_checkpoints "$log" "$W" || pbad+=("init-checkpoint (exit $?)")
    ios=()
    if [ "$dry" = 1 ]; then
        msg=$(check_flags "$log" "$dcl" export-io --counter "$ckpt_c" --localizer "$ckpt_l" \
            --out "$work/io-cuda.safetensors" --images 2 --size 256 --device cuda) || pbad+=("$msg")
    fi
    for dev in "${export_devs[@]}"; do
        if [ ${#pbad[@]} -eq 0 ]; then
            capped "$(left)" "$log" "$dcl" export-io --counter "$ckpt_c" --localizer "$ckpt_l" \
                --out "$work/io-$dev.safetensors" --images "$IMAGES" --size "$SIZE" --device "$dev"
            rc=$?
            if [ "$rc" -eq 0 ]; then ios+=("$work/io-$dev.safetensors"); else pbad+=("export-io --device $dev (exit $rc)"); fi
        fi
    done
    have_torch=1
    if [ "$dry" = 1 ]; then
        "$PY" -m py_compile scripts/torch_parity.py scripts/device_summary.py 2>>"$log" || pbad+=("py_compile")
        timeout 60 "$PY" -c 'import torch' 2>/dev/null || have_torch=0
    fi
    if [ ${#ios[@]} -gt 0 ] && [ "$have_torch" = 1 ]; then
        capped "$(left)" "$log" "$PY" scripts/torch_parity.py compare --io "${ios[@]}" \
            --counter "$ckpt_c" --localizer "$ckpt_l" --device "$torch_dev" --tol "$TOL" \
            --json "$work/parity-compare.json"
        rc=$?
        [ "$rc" -eq 0 ] || pbad+=("torch compare (exit $rc)")
    fi
    # The GMP op alone (DESIGN §1's grid_sample composition, fwd+bwd, L2 flushed per rep) is
    # timed first by the same `time` process (about a second), with dcl's GMP rows of the FP32
    # bench beside it as speed-ups; the dry run times it on the CPU at the tiny bench's shape.
    gmp_bench=()
    [ -s "$bench32" ] && gmp_bench=(--gmp-bench "$bench32")
    if [ "$dry" = 0 ]; then
        capped "$(left)" "$log" "$PY" scripts/torch_parity.py time --json "$work/torch-time.json" "${gmp_bench[@]}"
        rc=$?
        [ "$rc" -eq 0 ] || pbad+=("torch timings (exit $rc)")
    elif [ "$have_torch" = 1 ]; then
        msg=$(check_flags "$log" "$PY" scripts/torch_parity.py time --json "$work/torch-time.json" \
            "${gmp_bench[@]}") || pbad+=("$msg")
        if [ -s "$bench32" ]; then
            capped "$(left)" "$log" "$PY" scripts/torch_parity.py gmp-time --device cpu --bench "$bench32" \
                --warmup 1 --iters 2 --json "$work/gmp-time.json" || pbad+=("torch gmp-time (exit $?)")
        fi
    fi
    gmp_line=$("$PY" -c 'import json, sys
for p in sys.argv[1:]:
    try:
        d = json.load(open(p))
    except (OSError, ValueError):
        continue
    g = d.get("gmp", d) or {}
    print(g.get("summary") or ("GMP timing failed: " + str(g["error"]) if "error" in g else ""))
    break' "$work/torch-time.json" "$work/gmp-time.json" 2>/dev/null)
    "$PY" scripts/device_summary.py merge "$OUT/parity.json" compare="$work/parity-compare.json" \
        torch_time="$work/torch-time.json"
    detail=
    [ -s "$work/parity-compare.json" ] && detail=$("$PY" scripts/device_summary.py parity "$work/parity-compare.json")
    [ -s "$work/torch-time.json" ] && detail+="; $("$PY" scripts/device_summary.py torch-time "$work/torch-time.json")"
    [ -n "$gmp_line" ] && detail+="; $gmp_line"
    [ ${#pbad[@]} -gt 0 ] && detail+="; FAILED: ${pbad[*]}: $(last_line "$log")"
    if [ "$dry" = 1 ]; then
        if [ ${#pbad[@]} -gt 0 ]; then
            row failed "dry run: ${detail#; }"
        elif [ "$have_torch" = 1 ]; then
            row skipped "dry run: flags checked; export-io ran on ${export_devs[*]} at ${SIZE}x$SIZE, width x$W, compared with torch on the CPU: $detail"
        else
            row skipped "dry run: flags checked; export-io ran on ${export_devs[*]} at ${SIZE}x$SIZE, width x$W; no torch here, comparison and timings not run"
        fi
    elif [ ${#pbad[@]} -gt 0 ]; then
        row failed "${detail#; }"
    else
        row ok "${detail#; }"
    fi
fi

# ---- train: a short counter training run on the VGG cells --------------------------------
data=
for d in "$bundle/data/vgg" shared/data/vgg; do
    [ -d "$d/train" ] && [ -d "$d/val" ] && { data=$d; break; }
done
if wanted train; then
    part_begin train "$T_TRAIN"
    log=$logs/train.log
    cmd=("$dcl" train --model counter --data "${data:-MISSING}/train" --val "${data:-MISSING}/val"
        --device cuda --epochs 2 --profile --out "$work/run")
    if [ "$dry" = 1 ]; then
        if ! msg=$(check_flags "$log" "${cmd[@]}"); then
            row failed "dry run: $msg"
        else
            capped "$(left)" "$log" "$dcl" train --model counter --data tests/fixtures/vgg \
                --val tests/fixtures/vgg --device cpu --epochs 1 --max-steps 2 --batch-size 2 \
                --width-mult 0.125 --profile --out "$work/run"
            rc=$?
            if [ "$rc" -eq 0 ]; then
                row skipped "dry run: flags checked (data: ${data:-NOT FOUND, the GPU run would fail}); tiny CPU run on the fixtures: $("$PY" scripts/device_summary.py train "$log")"
            else
                row failed "dry run: the tiny CPU training run failed (exit $rc): $(last_line "$log")"
            fi
        fi
    elif [ -z "$data" ]; then
        row failed "no VGG data: neither $bundle/data/vgg nor ./shared/data/vgg (device-build.sh copies it)"
    else
        capped "$(left)" "$log" "${cmd[@]}"
        rc=$?
        m=$(find "$work/run" -name metrics.jsonl 2>/dev/null | head -1)
        [ -n "$m" ] && { echo "-- metrics.jsonl"; cat "$m"; } >>"$log"
        detail="$(find "$data/train" -name '*cell.png' | wc -l) images: $("$PY" scripts/device_summary.py train "$log")"
        if [ "$rc" -eq 0 ]; then row ok "$detail"; else row failed "exit $rc: $detail; $(last_line "$log")"; fi
    fi
fi

# ---- count: counting throughput -----------------------------------------------------------
if wanted count; then
    part_begin count "$T_COUNT"
    log=$logs/count.log
    if [ "$dry" = 1 ]; then
        cdev=cpu vdir=tests/fixtures/vgg
        cc=models/vgg-cells/counter.safetensors
        cl=models/vgg-cells/localizer.safetensors
        flags_bad=
        msg=$(check_flags "$log" "$dcl" count "$vdir" --glob '*cell.png' --counter "$cc" --device cuda) ||
            flags_bad+="$msg; "
        msg=$(check_flags "$log" "$dcl" count "$vdir" --glob '*cell.png' --counter "$cc" --device cuda \
            --localizer "$cl" --out "$work/count-out") || flags_bad+="$msg; "
        msg=$(check_flags "$log" "$dcl" data synth --out "$work/big" --n 1 --size 4096) || flags_bad+="$msg; "
    else
        cdev=cuda vdir=${data:+$data/val}
        make_checkpoints "$log" 1
        cc=$ckpt_c cl=$ckpt_l flags_bad=
    fi
    if [ -n "$flags_bad" ]; then
        row failed "dry run: $flags_bad"
    elif [ -z "$vdir" ] || [ ! -s "$cc" ]; then
        row failed "no VGG val data or checkpoints: $(last_line "$log")"
    else
        # Each step within what is left of the part; stdout (the counts) goes to the log too.
        step() { # LABEL CMD...: a "-- LABEL" line, then CMD; stops the part at the first failure
            [ "$rc" -eq 0 ] || return 0
            echo "-- $1" >>"$log"
            shift
            capped "$(left)" "$log" "$@"
            rc=$?
        }
        rc=0
        vn=$(find "$vdir" -name '*cell.png' | wc -l)
        step "warm-up (kernels loaded from the cache, memory pool grown)" \
            "$dcl" count "$vdir" --glob '*cell.png' --counter "$cc" --device "$cdev" --quiet
        step "counter, $vn VGG images" "$dcl" count "$vdir" --glob '*cell.png' --counter "$cc" --device "$cdev"
        step "counter + localizer, every output, $vn VGG images" "$dcl" count "$vdir" --glob '*cell.png' \
            --counter "$cc" --localizer "$cl" --device "$cdev" --out "$work/count-out"
        # The synthetic image was started after the preflight: wait for it within the part.
        synth_rc=0
        while kill -0 "$synth_pid" 2>/dev/null && [ "$(left)" -gt 3 ]; do sleep 1; done
        if kill -0 "$synth_pid" 2>/dev/null; then
            synth_rc=124
        else
            wait "$synth_pid" || synth_rc=$?
        fi
        { echo "-- the ${big}x$big synthetic image (made in the background since the preflight): exit $synth_rc"; cat "$logs/synth.log"; } >>"$log"
        if [ "$synth_rc" -eq 0 ]; then
            step "counter, one ${big}x$big image" "$dcl" count "$work/big" --glob '*cell.png' --counter "$cc" --device "$cdev"
        elif [ "$rc" -eq 0 ]; then
            rc=$synth_rc
            echo "data synth failed or did not finish (exit $synth_rc)" >>"$log"
        fi
        detail=$("$PY" scripts/device_summary.py count "$log")
        if [ "$rc" -ne 0 ]; then
            row failed "exit $rc: $detail; $(last_line "$log")"
        elif [ "$dry" = 1 ]; then
            row skipped "dry run: flags checked; tiny CPU run on the fixtures: $detail"
        else
            row ok "$detail"
        fi
    fi
fi

# ---- end ------------------------------------------------------------------------------------
if [ -s "$bench32" ] || [ -s "$bench_tf" ] || [ -s "$work/torch-time.json" ]; then
    {
        echo
        "$PY" scripts/device_summary.py steps --fp32 "$bench32" --tf32 "$bench_tf" --torch "$work/torch-time.json"
    } | tee -a "$summary"
fi
say "done in $(elapsed) s: $failed_parts part(s) failed$([ "$dry" = 1 ] && echo ' (dry run)')"
archive
exit "$failed_parts"
