#!/usr/bin/env bash
# Fuzzes every parser that takes outside bytes (fuzz/fuzz_targets), with
# libFuzzer through cargo fuzz, on the nightly toolchain.
#
#   scripts/fuzz.sh                 every target for 60 s
#   scripts/fuzz.sh 600 bus_wire    one target for 10 minutes
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0   every target for 10M executions
#
# Each target starts from its committed seed corpus (fuzz/corpus/TARGET);
# what a run adds stays in a scratch copy, so the repository is untouched.
# A crash stops the script with the input saved under fuzz/artifacts/ —
# make it a regression test beside the code, then fix it.
#
# The build goes to `fuzz/` in the workspace's cargo target directory
# (CARGO_TARGET_DIR, or target/), beside the normal build and never over it,
# so a kept build cache keeps it too. Debug assertions and overflow checks
# are on; no sanitizer, as Confab has no unsafe code of its own
# (docs/testing.md, "Fuzzing", weighs what AddressSanitizer would add).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CONFAB_ROOT"
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export CARGO_TARGET_DIR="$target/fuzz"
cd fuzz
build=(-O --sanitizer none --debug-assertions)

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ws_frames client_frame bus_wire rest_bodies config_file query_params)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal ||
  die "cargo fuzz needs the nightly toolchain (rustup toolchain install nightly)"
command -v cargo-fuzz >/dev/null || { log "installing cargo-fuzz"; cargo install cargo-fuzz --locked; }

log "building the fuzz targets (nightly, optimised, coverage-instrumented, in $CARGO_TARGET_DIR)"
cargo +nightly fuzz build "${build[@]}"

scratch=$(mktemp -d -t confab-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  cp -r "corpus/$t/." "$scratch/$t/"
  args=(-max_total_time="$secs" -print_final_stats=1 -max_len=70000)
  [ -n "${FUZZ_RUNS:-}" ] && args+=(-runs="$FUZZ_RUNS")
  [ "$secs" = 0 ] && args=("${args[@]:1}")
  limit="${FUZZ_RUNS:+$FUZZ_RUNS runs}"
  [ "$secs" = 0 ] || limit="${limit:+$limit or }$secs s"
  log "fuzzing $t (${limit:-no limit})"
  rc=0
  cargo +nightly fuzz run "${build[@]}" "$t" "$scratch/$t" -- "${args[@]}" >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|panicked|DONE|Done ' "$scratch/$t.log" || true
  [ "$rc" = 0 ] || { tail -n 40 "$scratch/$t.log" >&2; die "$t found a failing input (see fuzz/artifacts/$t)"; }
done
log "no target found a failing input"
