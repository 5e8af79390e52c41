#!/usr/bin/env bash
# The header is the contract: regenerate ffi/capi/src/bindings.rs from ffi/include/cudalloc.h
# with bindgen and fail if the committed file differs. Installs libclang when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then
    echo "installing libclang (needed by bindgen)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi
cargo run -q -p cudalloc-header-gen
if ! git diff --exit-code -- ffi/capi/src/bindings.rs; then
    echo "ffi/capi/src/bindings.rs is out of date with ffi/include/cudalloc.h:" >&2
    echo "run 'cargo run -p cudalloc-header-gen' and commit the result" >&2
    exit 1
fi
echo "header check: bindings.rs matches cudalloc.h"
