# Shared by scripts/setup and scripts/test. Not executable on its own.

SBX_CACHE=${SBX_CACHE:-/var/cache/sbx}
SBX_BUILD_DIR=${SBX_BUILD_DIR:-$root/build}
export SBX_CACHE SBX_BUILD_DIR

die() {
  echo "error: $*" >&2
  exit 1
}

# step NAME CMD...: runs CMD, printing NAME before and the elapsed time after.
step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  echo "    done: $name ($((SECONDS - start)) s)"
}

# Configures $SBX_BUILD_DIR (Release, Ninja) if needed, then builds.
# Extra arguments go to the first configure, e.g. -DSBX_SANITIZE=ON.
configure_and_build() {
  if [[ ! -f "$SBX_BUILD_DIR/CMakeCache.txt" ]]; then
    cmake -S "$root" -B "$SBX_BUILD_DIR" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  fi
  cmake --build "$SBX_BUILD_DIR"
}
