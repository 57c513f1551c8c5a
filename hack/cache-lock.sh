# Sourced by the build scripts: one build of a cached binary at a time.
# kit_cached_or_lock OUT: prints OUT and exits the script if it is built; otherwise takes an
# exclusive lock on OUT.lock (held until the script exits), so parallel callers (make, test
# fixtures, helper checkouts) wait for the first build instead of removing its work directory,
# and prints OUT and exits if the build finished while it waited.
kit_cached_or_lock() {
  local out="$1"
  if [ -x "$out" ]; then
    echo "$out"
    exit 0
  fi
  exec 9>"$out.lock"
  if ! flock -n 9; then
    echo "$(basename "$0"): another build of $(basename "$out") is running; waiting for it" >&2
    flock 9
  fi
  if [ -x "$out" ]; then
    echo "$out"
    exit 0
  fi
}
