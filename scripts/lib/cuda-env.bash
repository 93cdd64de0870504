# Sourced by scripts/build-cuda and scripts/check-cuda (with `repo` set to the repository root): installs
# NVIDIA's CUDA 13.0 wheels into $CUDA_VENV on first use, makes $repo/.cuda/home (unversioned library
# links and a link-time stub of the driver, libcuda.so.1) and exports PATH, NVCC, CUDA_HOME and
# CUDA_COMPUTE_CAP for cargo's --features cuda builds (shared/GPU.md step 1).
CUDA_VENV=${CUDA_VENV:-$repo/.cuda/venv}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# The 13.0 line matches a 580 driver; a newer nvcc emits PTX that driver may refuse.
CUDA_WHEELS=${CUDA_WHEELS:-"cuda-toolkit[nvcc,curand,cublas,cccl,crt,nvvm,cudart]==13.0.*"}
target=${CARGO_TARGET_DIR:-$repo/target}

if ! "$CUDA_VENV/bin/python" -c 'import nvidia' 2>/dev/null ||
  ! compgen -G "$CUDA_VENV/lib/python3*/site-packages/nvidia/cu*/bin/nvcc" > /dev/null; then
  echo "$(basename "$0"): installing $CUDA_WHEELS into $CUDA_VENV" >&2
  python3 -m venv "$CUDA_VENV"
  "$CUDA_VENV/bin/pip" install -q "$CUDA_WHEELS"
fi
nvcc=$(compgen -G "$CUDA_VENV/lib/python3*/site-packages/nvidia/cu*/bin/nvcc" | head -1)
wheel=$(dirname "$(dirname "$nvcc")") # .../site-packages/nvidia/cu13: bin, include, lib, nvvm
echo "$(basename "$0"): $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -1) from $wheel" >&2

# CUDA_HOME for cudarc (it links from $CUDA_HOME/lib) and cudaforge (nvcc): unversioned symlinks to the
# wheels' libraries; their sonames (libcublas.so.13, ...) are what the binary will ask for.
home=$repo/.cuda/home
rm -rf "$home"
mkdir -p "$home/lib"
ln -s "$wheel/bin" "$home/bin"
ln -s "$wheel/include" "$home/include"
for lib in cudart cublas cublasLt curand nvrtc; do
  so=$(compgen -G "$wheel/lib/lib$lib.so.[0-9]*" | sort | head -1) ||
    { echo "$(basename "$0"): lib$lib.so.* missing under $wheel/lib" >&2; exit 1; }
  ln -s "$so" "$home/lib/lib$lib.so"
done

# Link-time stub of the driver API: every `cu*` function cudarc's driver bindings declare, each
# returning CUDA_ERROR_STUB_LIBRARY (34) should it ever run.
cudarc=$(cargo metadata --format-version 1 --features ft-train-lora/cuda 2> /dev/null |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
syms=$(sed -n 's/^pub unsafe fn \(cu[A-Za-z0-9_]*\)(.*/\1/p' "$(dirname "$cudarc")/src/driver/sys/mod.rs" | sort -u)
[ -n "$syms" ] || { echo "$(basename "$0"): no cu* symbols found in $cudarc's driver bindings" >&2; exit 1; }
for s in $syms; do printf 'int %s(void) { return 34; }\n' "$s"; done > "$home/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/libcuda.so" "$home/cuda_stub.c"
echo "$(basename "$0"): stub libcuda.so with $(wc -l < "$home/cuda_stub.c") symbols" >&2

export PATH="$wheel/bin:$PATH" NVCC="$nvcc" CUDA_HOME="$home"
