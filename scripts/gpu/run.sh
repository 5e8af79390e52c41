#!/usr/bin/env bash
# The GPU kit's one command (see scripts/gpu/bundle.sh): run from the bundle folder on the
# GPU machine, it writes full logs under $OUT (default ./out) and prints one summary table
# last. Each part runs under its own `timeout`, so one hang cannot eat the lease.
#
#   run.sh            on a real GPU (needs nvcc; compute-sanitizer, torch, CuPy when there)
#   CUDALLOC_GPU_PARTS="stress timings" run.sh   only those parts
#   run.sh --dry-run  every part that needs no real GPU, on the stand-in CUDA (`cudalloc
#                     standin`): no kernels run there, so the tag checks, compute-sanitizer,
#                     nvcc and the training's compute are skipped, each with a line
#
# Parts: 1 suites (the test binaries), 2 stress (C client, threads on their own streams, tag
# kernels, then under compute-sanitizer memcheck), 3 frameworks (a tiny transformer's
# training steps under PyTorch's allocator, the cudalloc plug-in and the preload shim; the
# nvcc program and CuPy under the preload), 4 timings (cached pairs), 5 snapshots (each
# training loop's, read back by `cudalloc replay`). Exit status 0 only when no part failed.
# It must not change the device's settings (clocks, persistence, MIG, reset).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
OUT="${OUT:-$here/out}"
mkdir -p "$OUT/logs" "$OUT/traces"
: > "$OUT/summary.tsv"
export here dry OUT
export PYTHON="${CUDALLOC_PYTHON:-python3}"
export CUDALLOC_LIBRARY="$here/lib/libcudalloc.so"
PRELOAD_SHIM="$here/lib/libcudalloc_preload.so"
export PRELOAD_SHIM

# The driver the clients and libraries reach: the stand-in in a dry run.
if [ "$dry" = 1 ]; then
    line="$("$here/bin/cudalloc" standin "$OUT/standin" 2>/dev/null)" || {
        echo "run.sh: cudalloc standin failed" >&2
        exit 1
    }
    export STANDIN="${line#LD_PRELOAD=}"
    export LD_LIBRARY_PATH="$OUT/standin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CUDALLOC_STANDIN_CAPACITY=16GiB
    # The stand-in's libraries first, before the program's own CUDA (the torch wheel's RPATH).
    export LD_PRELOAD="$STANDIN"
else
    export STANDIN=""
fi

# Note one line for the summary of the part running now.
note() { echo "$*"; echo "$*" >> "$OUT/notes.$PART"; }
# A part that returns 77 was skipped, for a reason it noted (dry run only).
export -f note

part_suites() {
    local skip_cargo=" preload real_pytorch c_client gpu_kit "
    local bad=0 ran=0
    # The test binaries read the project's files (traces/, tests/) and write temporary files
    # under the folder they were built in: make it reach the checkout the bundle sits in.
    local manifest; manifest="$(cat "$here/MANIFEST_DIR")"
    if [ "$dry" = 0 ] && [ ! -d "$manifest" ] && [ -f "$here/../Cargo.toml" ]; then
        mkdir -p "$(dirname "$manifest")" 2> /dev/null && ln -s "$(cd "$here/.." && pwd)" "$manifest" \
            && note "linked $manifest to the checkout"
    fi
    [ -d "$manifest" ] || { note "$manifest missing: tests reading the project's files will fail"; bad=1; }
    for t in "$here"/tests/*; do
        local name; name="$(basename "$t")"
        if [ "$dry" = 1 ]; then
            # `cargo test` already ran them on this machine: only check each one starts.
            "$t" --list > "$OUT/logs/suite.$name.log" 2>&1 || { note "$name: --list FAILED"; bad=1; }
            ran=$((ran + 1))
            continue
        fi
        if [[ "$skip_cargo" == *" ${name%%-*} "* ]]; then
            note "$name: skipped (builds with cargo, which the GPU machine lacks)"
            continue
        fi
        if timeout -k 5 240 "$t" --test-threads=8 > "$OUT/logs/suite.$name.log" 2>&1; then
            ran=$((ran + 1))
        else
            note "$name: FAILED (logs/suite.$name.log)"
            bad=1
        fi
    done
    note "$ran test binaries $([ "$dry" = 1 ] && echo listed || echo passed); they still run over the stand-in and simulated backends"
    return $bad
}

part_stress() {
    local ptx=-
    if [ "$dry" = 1 ]; then
        note "tag kernels skipped: the stand-in CUDA runs no kernels"
    elif command -v nvcc > /dev/null; then
        nvcc --ptx -arch=compute_90 -o "$OUT/tag.ptx" "$here/kernels/tag.cu" || return 1
        ptx="$OUT/tag.ptx"
    else
        note "no nvcc: cannot build the tag kernels"; return 1
    fi
    "$here/clients/stress" "$ptx" 8 4000 || return 1
    note "$(grep -o 'mismatched_words=[0-9]* host_overlaps=[0-9]*' "$OUT/logs/stress.log" | head -1)"
    if [ "$dry" = 1 ]; then
        note "compute-sanitizer skipped: no GPU"
    elif command -v compute-sanitizer > /dev/null; then
        compute-sanitizer --tool memcheck --error-exitcode 3 "$here/clients/stress" "$ptx" 4 400 \
            || { note "compute-sanitizer memcheck FAILED"; return 1; }
        note "compute-sanitizer memcheck: clean"
    else
        note "compute-sanitizer missing"; return 1
    fi
}

train() { # train ALLOCATOR [env...]
    local a="$1"; shift
    local snap=(--snapshot "$OUT/traces/tiny_transformer_$a.pickle")
    [ "$a" = preload ] && snap=()
    local nc=(); [ "$dry" = 1 ] && nc=(--no-compute)
    local steps=20; [ "$dry" = 1 ] && steps=3
    env "$@" "$PYTHON" "$here/clients/train.py" "$a" --steps "$steps" "${nc[@]}" \
        --python-module "$here/python" "${snap[@]}" \
        > "$OUT/logs/train.$a.log" 2>&1
    local rc=$?
    grep '^result:' "$OUT/logs/train.$a.log" | sed 's/^result: //' > "$OUT/train.$a.json"
    return $rc
}
export -f train

part_frameworks() {
    local bad=0
    if ! "$PYTHON" -c 'import torch' 2> /dev/null; then
        note "no torch for $PYTHON (set CUDALLOC_PYTHON)"
        [ "$dry" = 1 ] && return 77
        return 1
    fi
    train native || { note "native: FAILED"; bad=1; }
    train cudalloc || { note "cudalloc plug-in: FAILED"; bad=1; }
    train preload PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDALLOC_SUMMARY_AT_EXIT=1 \
        "LD_PRELOAD=$PRELOAD_SHIM${STANDIN:+:$STANDIN}" || { note "preload: FAILED"; bad=1; }
    local reserved
    reserved="$(grep -m1 '^| GPU reserved memory' "$OUT/logs/train.preload.log" | awk -F'|' '{print $4}')"
    if [ -n "$reserved" ]; then
        note "preload shim: peak reserved$reserved"
    else
        note "preload shim: no summary at exit (was the shim loaded?)"; bad=1
    fi
    note "$("$PYTHON" - "$OUT" <<'PY'
import json, sys
r = {}
for a in ("native", "cudalloc", "preload"):
    try:
        r[a] = json.load(open(f"{sys.argv[1]}/train.{a}.json"))
    except (OSError, ValueError):
        pass
n, c = r.get("native", {}), r.get("cudalloc", {})
mib = lambda b: f"{b / 2**20:.0f} MiB"
print("peak reserved native", mib(n.get("reserved_peak", 0)), "| cudalloc", mib(c.get("reserved_peak", 0)),
      "| losses finite:", all(x.get("losses_finite") for x in r.values()),
      "| compute:", all(x.get("compute") for x in r.values()))
PY
)"
    if [ "$dry" = 1 ]; then
        note "nvcc program skipped: no nvcc and no kernels on the stand-in"
    else
        nvcc -O2 -o "$OUT/malloc_loop" "$here/clients/malloc_loop.cu" || return 1
        CUDALLOC_SUMMARY_AT_EXIT=1 LD_PRELOAD="$PRELOAD_SHIM" "$OUT/malloc_loop" 3000 \
            || { note "nvcc program under the preload: FAILED"; bad=1; }
    fi
    if "$PYTHON" -c 'import cupy' 2> /dev/null; then
        local nc=(); [ "$dry" = 1 ] && nc=(--no-compute)
        LD_PRELOAD="$PRELOAD_SHIM${STANDIN:+:$STANDIN}" CUDALLOC_SUMMARY_AT_EXIT=1 \
            "$PYTHON" "$here/clients/cupy_check.py" "${nc[@]}" || { note "CuPy: FAILED"; bad=1; }
    else
        note "CuPy skipped: not installed for $PYTHON"
        [ "$dry" = 0 ] && bad=1
    fi
    return $bad
}

# PyTorch's raw_alloc behind a C interface (benches/vs_pytorch/torch_alloc.cpp), built with
# the torch of $PYTHON; prints the library's path, or nothing when it cannot be built.
torch_harness() {
    local dirs; dirs="$("$PYTHON" -c 'import os, torch; d = os.path.dirname(torch.__file__); print(d); print(os.path.dirname(d))' 2> /dev/null)" || return 0
    local torch_dir site; torch_dir="$(sed -n 1p <<< "$dirs")"; site="$(sed -n 2p <<< "$dirs")"
    local inc=(-I"$torch_dir/include")
    for d in "$site"/nvidia/*/include /usr/local/cuda/include; do [ -d "$d" ] && inc+=(-I"$d"); done
    ${CXX:-g++} -O2 -std=c++20 -shared -fPIC -o "$OUT/libtorch_alloc.so" "$here/clients/torch_alloc.cpp" \
        "${inc[@]}" -L"$torch_dir/lib" -lc10_cuda -lc10 -Wl,-rpath,"$torch_dir/lib" >&2 \
        && echo "$OUT/libtorch_alloc.so"
}
export -f torch_harness

part_timings() {
    local harness; harness="$(torch_harness)"
    if [ -n "$harness" ]; then
        export PAIRS_TORCH_LIB="$harness"
    else
        note "PyTorch's raw_alloc harness not built (see logs/timings.log)"
        [ "$dry" = 0 ] && return 1
    fi
    if [ "$dry" = 1 ]; then
        "$here/clients/pairs" 2000 3 4 || return 1
    else
        "$here/clients/pairs" 5000 5 16 || return 1
    fi
    note "$(grep -c 'x$' "$OUT/logs/timings.log") figures ($(grep -c '^torch raw_alloc' "$OUT/logs/timings.log") of torch raw_alloc)"
    if ! "$PYTHON" -c 'import torch' 2> /dev/null; then
        note "PyTorch's pairs skipped: no torch for $PYTHON"
        if [ "$dry" = 0 ]; then return 1; fi
    else
        if [ "$dry" = 1 ]; then
            "$PYTHON" "$here/clients/pairs_torch.py" 2000 3 || return 1
        else
            "$PYTHON" "$here/clients/pairs_torch.py" 20000 7 || return 1
        fi
    fi
}

part_snapshots() {
    local bad=0 n=0
    for s in "$OUT"/traces/*.pickle; do
        [ -e "$s" ] || continue
        n=$((n + 1))
        "$here/bin/cudalloc" replay "$s" > "$OUT/logs/replay.$(basename "$s").log" 2>&1 \
            || { note "$(basename "$s"): cudalloc replay FAILED"; bad=1; }
    done
    if [ "$n" = 0 ]; then
        note "no snapshots were recorded"
        if [ "$dry" = 1 ] && ! "$PYTHON" -c 'import torch' 2> /dev/null; then return 77; fi
        return 1
    fi
    note "$n snapshots in traces/, each replayed"
    return $bad
}
export -f part_suites part_stress part_frameworks part_timings part_snapshots

# Run one part under its own time limit; record PASS / FAIL / TIMEOUT and its time.
run_part() {
    local name="$1" limit="$2"
    export PART="$name"
    : > "$OUT/notes.$name"
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)" >&2
    timeout -k 10 "$limit" bash -c "part_$name" > "$OUT/logs/$name.log" 2>&1
    local rc=$? status=PASS
    case $rc in 0) ;; 77) status=SKIP ;; 124 | 137) status=TIMEOUT ;; *) status=FAIL ;; esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" \
        "$(sed ':a;N;$!ba;s/\n/; /g' "$OUT/notes.$name")" >> "$OUT/summary.tsv"
}

# Limits add up to under 10 minutes on the GPU. CUDALLOC_GPU_PARTS picks some (a rerun).
declare -A limit=([suites]=110 [stress]=110 [frameworks]=170 [timings]=150 [snapshots]=30)
for p in ${CUDALLOC_GPU_PARTS:-suites stress frameworks timings snapshots}; do
    [ -n "${limit[$p]:-}" ] || { echo "run.sh: no part $p" >&2; exit 2; }
    run_part "$p" "${limit[$p]}"
done

echo
echo "cudalloc GPU kit $([ "$dry" = 1 ] && echo 'DRY RUN on the stand-in CUDA' || nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null) — logs in $OUT/logs"
printf '%-11s %-8s %5s  %s\n' part status secs notes
while IFS=$'\t' read -r name status secs notes; do
    printf '%-11s %-8s %5s  %s\n' "$name" "$status" "$secs" "$notes"
done < "$OUT/summary.tsv"
! grep -qP '\t(FAIL|TIMEOUT)\t' "$OUT/summary.tsv"
