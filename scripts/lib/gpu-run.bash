# Sourced ON the GPU machine by scripts/bench-train-gpu and scripts/check-gpu (with `work`, a scratch
# folder, and PYTHON set): the binaries scripts/build-cuda made, and CUDA's libraries from the PyTorch
# environment there (shared/GPU.md step 2).

# unxz_py FILE.xz OUT: python's lzma, since the GPU machine may have no xz.
unxz_py() { "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }

# gpu_binary NAME: prints the path of NAME: $BIN/NAME when BIN is set, else .device/bin/NAME, else
# .device/gpu/NAME.xz unpacked into $work/bin.
gpu_binary() {
  local name=$1
  if [ -n "${BIN:-}" ]; then
    [ -x "$BIN/$name" ] || { echo "$BIN/$name missing" >&2; return 1; }
    echo "$BIN/$name"
  elif [ -x ".device/bin/$name" ]; then
    echo ".device/bin/$name"
  elif [ -s ".device/gpu/$name.xz" ]; then
    mkdir -p "$work/bin"
    unxz_py ".device/gpu/$name.xz" "$work/bin/$name" && chmod +x "$work/bin/$name"
    echo "$work/bin/$name"
  else
    echo "$name missing: run scripts/build-cuda on a build machine and copy .device/ here" >&2
    return 1
  fi
}

# gpu_libraries BINARY: exports LD_LIBRARY_PATH with the PyTorch environment's nvidia/*/lib folders
# (CUDA runtime, cuBLAS), and cuRAND from .device/gpu where they lack it; fails naming what is missing.
gpu_libraries() {
  local libs
  libs=$("$PYTHON" -c 'import glob, os, nvidia; print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib")))))')
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [[ $(ldd "$1" 2> /dev/null || true) == *"libcurand.so.10 => not found"* ]] && [ -s .device/gpu/libcurand.so.10.xz ]; then
    mkdir -p "$work/lib"
    unxz_py .device/gpu/libcurand.so.10.xz "$work/lib/libcurand.so.10"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$work/lib"
  fi
  if ldd "$1" 2> /dev/null | grep 'not found' >&2; then # grep reads all: no SIGPIPE
    echo "libraries above not found in LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
    return 1
  fi
}
