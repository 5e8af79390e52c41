#!/usr/bin/env bash
# Builds the GPU kit: one folder (default gpu-bundle/, git-ignored) to carry to the GPU
# machine, which has no Rust and no network, and run there with its run.sh.
#
#   scripts/gpu/bundle.sh [--debug] [DIR]
#
# It holds, stripped: the release test binaries (the list `cargo test --no-run
# --message-format=json` gives), the CLI, libcudalloc.so, libcudalloc_preload.so; the
# kernels (kernels/*.cu), the C header, the Python module, the clients (C clients of
# libcudalloc.so built here, their sources, the nvcc program's source, the Python scripts)
# and run.sh. It prints its size and fails above 64 MiB (release only: --debug builds the
# debug profile, which `cargo test` has already built, for the dry-run test).
# It must not run anything it bundles: run.sh does.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
profile=release
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    shift
fi
out="${1:-$root/gpu-bundle}"
cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)
limit=$((64 << 20))

# ${CARGO:-cargo}: inside `cargo test` the same cargo that runs the tests.
cargo=${CARGO:-cargo}
"$cargo" build -q "${cargo_profile[@]}" -p cudalloc -p cudalloc-capi -p cudalloc-preload
mapfile -t tests < <("$cargo" test -q "${cargo_profile[@]}" --workspace --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
')
[ "${#tests[@]}" -gt 0 ] || { echo "bundle: cargo listed no test binaries" >&2; exit 1; }

target="$root/target/$profile"
rm -rf "$out"
mkdir -p "$out"/{bin,lib,tests,kernels,include,clients,python}
strip_to() { cp "$1" "$2" && strip --strip-debug "$2"; }
strip_to "$target/cudalloc" "$out/bin/cudalloc"
strip_to "$target/libcudalloc.so" "$out/lib/libcudalloc.so"
strip_to "$target/libcudalloc_preload.so" "$out/lib/libcudalloc_preload.so"
for t in "${tests[@]}"; do
    name="${t%%$'\t'*}"
    exe="${t#*$'\t'}"
    # Unit tests of the library and of a binary share their crate's name: keep both.
    dest="$out/tests/$name"
    [ -e "$dest" ] && dest="$out/tests/$name-$(basename "$exe")"
    strip_to "$exe" "$dest"
done
cp kernels/*.cu "$out/kernels/"
cp ffi/include/cudalloc.h "$out/include/"
cp -r ffi/python/cudalloc "$out/python/"
find "$out/python" -name __pycache__ -prune -exec rm -rf {} +
cp scripts/gpu/clients/* benches/vs_pytorch/torch_alloc.cpp "$out/clients/"
cp scripts/gpu/run.sh "$out/run.sh"
# The test binaries find the project's files (traces, tests/pytorch) where they were built.
echo "$root" > "$out/MANIFEST_DIR"
for c in stress pairs; do
    ${CC:-cc} -O2 -Wall -Wextra -I"$out/include" -o "$out/clients/$c" "scripts/gpu/clients/$c.c" \
        -L"$out/lib" -lcudalloc -Wl,-rpath,'$ORIGIN/../lib' -lpthread -ldl
done

size=$(du -sb "$out" | cut -f1)
echo "bundle: $out, ${#tests[@]} test binaries, $((size >> 20)) MiB ($size bytes, $profile)"
if [ "$profile" = release ] && [ "$size" -gt "$limit" ]; then
    echo "bundle: over the 64 MiB limit" >&2
    exit 1
fi
