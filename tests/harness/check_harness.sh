#!/usr/bin/env bash
# The test of the test harness (ctest entry harness/check; see TESTING.md): runs the planted binary
# (tests/harness/planted.cc, ctest entry harness/planted) through ctest itself and checks that
#   - a planted failure in a binary that also skips a GPU test is reported as a failure (not a skip);
#   - a binary whose tests all skip is reported as skipped, and ctest still succeeds;
#   - in GPU-required mode (QSERVE_REQUIRE_GPU=1) the same all-skipped binary fails.
# Usage: check_harness.sh BUILD_DIR
set -u
BUILD=$1
fails=0
run() {  # run EXPECTED_RC_KIND EXPECTED_TEXT [VAR=VALUE ...]
  local want=$1 text=$2; shift 2
  local out rc
  out=$(env -u QSERVE_REQUIRE_GPU -u QSERVE_PLANTED_FAILURE -u QSERVE_PLANTED_ALL_SKIP "$@" \
        ctest --test-dir "$BUILD" -R '^harness/planted$' 2>&1); rc=$?
  local ok=1
  if [ "$want" = fail ] && [ $rc -eq 0 ]; then ok=0; fi
  if [ "$want" = pass ] && [ $rc -ne 0 ]; then ok=0; fi
  grep -q -- "$text" <<<"$out" || ok=0
  if [ $ok -eq 1 ]; then echo "ok: [$*] -> rc $rc, '$text'"; else
    echo "FAILED: [$*] expected $want with '$text', got rc $rc:"; echo "$out"; fails=$((fails + 1)); fi
}
run pass "tests passed"
run fail "\*\*\*Failed" QSERVE_PLANTED_FAILURE=1
run fail "\*\*\*Failed" QSERVE_PLANTED_FAILURE=1 QSERVE_PLANTED_ALL_SKIP=0
run pass "\*\*\*Skipped" QSERVE_PLANTED_ALL_SKIP=1
run fail "\*\*\*Failed" QSERVE_PLANTED_ALL_SKIP=1 QSERVE_REQUIRE_GPU=1
exit $((fails > 0))
