#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-imatrix, llama-quantize, llama-perplexity, llama-bench) from
# the llama.cpp sources inside the pinned llama-cpp-python source package (PyPI; nothing else is
# downloaded), into benchmarks/.llama-tools/bin. The peers of benchmarks/gguf_kquants.py.
# LLAMA_SRC=DIR uses an already unpacked llama.cpp source tree of the same version instead.
set -euo pipefail
cd "$(dirname "$0")"
OUT=.llama-tools
mkdir -p "$OUT"
VERSION=$(grep '^llama-cpp-python==' ../constraints.txt | cut -d= -f3)
if [ -z "${LLAMA_SRC:-}" ]; then
  if [ ! -d "$OUT/src" ]; then
    python3 -m pip download --no-deps --no-binary :all: -d "$OUT" "llama-cpp-python==$VERSION"
    mkdir -p "$OUT/src" && tar -xzf "$OUT"/llama_cpp_python-"$VERSION".tar.gz -C "$OUT/src" --strip-components=1
  fi
  LLAMA_SRC="$OUT/src/vendor/llama.cpp"
fi
cmake -S "$LLAMA_SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$OUT/build" -j "$(nproc)" --target llama-imatrix llama-quantize llama-perplexity llama-bench
mkdir -p "$OUT/bin" && cp "$OUT"/build/bin/llama-{imatrix,quantize,perplexity,bench} "$OUT/bin/"
echo "llama.cpp tools of llama-cpp-python $VERSION in benchmarks/$OUT/bin"
