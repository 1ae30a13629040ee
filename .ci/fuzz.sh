#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ (with AddressSanitizer and LeakSanitizer) and runs
# each for a bounded time. Fails on any crash, sanitizer report or leak; the reproducer is
# left in fuzz/artifacts/<target>/. See docs/HARDENING.md.
#
#   bash .ci/fuzz.sh                 # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 bash .ci/fuzz.sh sdpa
#
# The toolchain is stable: cargo-fuzz needs `-Zsanitizer` and sancov flags, which stable
# rustc accepts with RUSTC_BOOTSTRAP=1. If that or installing cargo-fuzz is impossible on
# this machine the script says so and skips (exit 0) instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(gemm sdpa capi)
fi
export RUSTC_BOOTSTRAP=1
# Outside the source tree, next to the workspace's own build output.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target/fuzz}"
CARGO_FUZZ_VERSION=0.13.2

skip() {
  echo "fuzz: SKIPPED: $*"
  exit 0
}

echo "== fuzz: toolchain"
probe="$(mktemp -d)"
echo 'fn main() {}' >"$probe/p.rs"
if ! rustc -Zsanitizer=address --target x86_64-unknown-linux-gnu -o "$probe/p" "$probe/p.rs" \
  >"$probe/log" 2>&1; then
  cat "$probe/log"
  rm -rf "$probe"
  skip "rustc refuses -Zsanitizer=address even with RUSTC_BOOTSTRAP=1"
fi
rm -rf "$probe"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  # Its own target dir: the fuzz build flags must not reach cargo-fuzz itself.
  if ! CARGO_TARGET_DIR="$ROOT/target/cargo-fuzz-install" \
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"; then
    skip "cargo install cargo-fuzz failed (no registry access?)"
  fi
fi
cargo fuzz --version

for t in "${TARGETS[@]}"; do
  echo "== fuzz: build $t"
  cargo fuzz build --release "$t"
done

for t in "${TARGETS[@]}"; do
  # Inputs that once crashed a target (committed under fuzz/regressions/<target>/) are
  # replayed first, every run, whatever the random search finds or misses this time.
  if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls -A "fuzz/regressions/$t")" ]; then
    echo "== fuzz: replay $(ls "fuzz/regressions/$t" | wc -l) regression input(s) of $t"
    cargo fuzz run --release "$t" "fuzz/regressions/$t"/* -- -runs=1
  fi
  echo "== fuzz: run $t for ${SECONDS_EACH} s"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # -timeout: one input may take at most 10 s (a hang fails the run);
  # -rss_limit_mb: a runaway allocation fails the run instead of the machine.
  log="$(mktemp)"
  if ! cargo fuzz run --release "$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz: $t FAILED; reproducer(s): $(ls "fuzz/artifacts/$t")"
    echo "  rerun one: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>"
    rm -f "$log"
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  echo "fuzz: $t ok: ${runs:-?} inputs in ${SECONDS_EACH} s, no crash, no leak"
  rm -f "$log"
done
