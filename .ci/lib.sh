# Helpers sourced by .ci/run and .ci/cuda_build_check.

fail() { echo "CI FAILED: $*" >&2; exit 1; }

# A fresh copy of the checkout as a clone has it (the files git tracks, as they are now: no build products),
# so that a build there never writes into the checkout (setup.py records its torch in cure_ext/_build_info.py).
clean_copy() {  # SRC DEST
  mkdir -p "$2"
  git -C "$1" ls-files -z | (cd "$1" && xargs -0 cp --parents -t "$2")
}

# pytest as asked, with the venv of PYTHON first on PATH as when it is activated (scripts the tests start call
# `python3`), its summary line always printed and failures and skips listed; then every skip must be a test
# that needs a CUDA device (this machine has none): a test skipping for any other reason hides a failure.
# Returns non-zero if any test failed or skipped otherwise.
run_pytest() {  # LABEL PYTHON PYTEST_ARGS...
  local label=$1 py=$2 log rc=0
  shift 2
  echo "== $label"
  log=$(mktemp)
  PATH="$(dirname "$py"):$PATH" "$py" -m pytest -rfEs "$@" 2>&1 | tee "$log" || rc=1
  local other
  other=$(grep -E '^SKIPPED ' "$log" | grep -v -i -E 'needs a CUDA device' || true)
  if [ -n "$other" ]; then
    echo "CI: skipped for a reason other than the missing CUDA device:" >&2
    echo "$other" >&2
    rc=1
  fi
  rm -f "$log"
  return $rc
}
