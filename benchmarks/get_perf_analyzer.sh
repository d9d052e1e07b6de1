#!/usr/bin/env bash
# Triton's load generator, perf_analyzer, for benchmarks/bench_serve.py: prints the path of a working binary.
#
# `pip install perf-analyzer` (2.58+) ships manylinux_2_38 wheels only: it needs glibc 2.38 and libstdc++ 3.4.32,
# which Debian 12 (glibc 2.36) lacks, so there pip only finds a 0.1.0 placeholder. tritonclient 2.48.0 (Triton
# 24.07) is the newest wheel whose bundled perf_analyzer needs glibc <= 2.34; it links libb64 (Debian: libb64-0d)
# and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel; loaded, never used without --shared-memory=cuda).
# Both come into .bench-tools/ here, with a wrapper that sets the library path. Nothing is installed into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# A binary that starts: it prints its usage (SYNOPSIS) when run without a model (it has no --help).
runs() { local out; out="$("$1" 2>&1 || true)"; [[ "$out" == *SYNOPSIS* ]]; }
TOOLS="$PWD/.bench-tools"
WRAPPER="$TOOLS/bin/perf_analyzer"

if command -v perf_analyzer >/dev/null && runs perf_analyzer; then
    command -v perf_analyzer
    exit 0
fi
if [[ -x "$WRAPPER" ]] && runs "$WRAPPER"; then
    echo "$WRAPPER"
    exit 0
fi
glibc="$(ldd --version | head -1 | grep -oE '[0-9]+\.[0-9]+$')"
if [[ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -1)" == "2.38" ]]; then
    python -m pip install -q "perf-analyzer>=2.58" >&2
    command -v perf_analyzer
    exit 0
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
    apt-get install -y -qq libb64-0d >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; }
fi
rm -rf "$TOOLS" && mkdir -p "$TOOLS/wheels" "$TOOLS/bin" "$TOOLS/lib"
python -m pip download -q --no-deps --only-binary=:all: -d "$TOOLS/wheels" tritonclient==2.48.0 \
    "nvidia-cuda-runtime-cu12==12.9.79" >&2
python - "$TOOLS" <<'PY'
import sys, zipfile
from pathlib import Path

tools = Path(sys.argv[1])
for wheel in (tools / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith("/bin/perf_analyzer"):
                (tools / "perf_analyzer.bin").write_bytes(z.read(name))
            elif name.endswith("/lib/libcudart.so.12"):
                (tools / "lib" / "libcudart.so.12").write_bytes(z.read(name))
PY
chmod +x "$TOOLS/perf_analyzer.bin"
cat >"$WRAPPER" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$TOOLS/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$TOOLS/perf_analyzer.bin" "\$@"
EOF
chmod +x "$WRAPPER"
runs "$WRAPPER" || { echo "perf_analyzer from tritonclient 2.48.0 does not run here" >&2; exit 1; }
echo "$WRAPPER"
