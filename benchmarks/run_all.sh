#!/usr/bin/env bash
# Run every benchmark and collect the Markdown reports in one file.
#
#   benchmarks/run_all.sh                  # full runs (about 10 minutes on 2 cores)
#   benchmarks/run_all.sh --quick          # smoke test (under a minute)
#   PYTHON=/path/to/python benchmarks/run_all.sh
#   OUT=results.md benchmarks/run_all.sh   # where the combined report goes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
out="${OUT:-$(mktemp -t tracer-bench-XXXXXX.md)}"
: > "$out"
for script in overhead memory load long_run verify ops report_page; do
    echo "== $script $*" >&2
    "$python" "$here/$script.py" "$@" --markdown "$out.$script"
    cat "$out.$script" >> "$out"
    echo >> "$out"
    rm -f "$out.$script"
done
echo "== all reports: $out" >&2
