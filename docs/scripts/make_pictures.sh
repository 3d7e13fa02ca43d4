#!/usr/bin/env bash
# The routing pictures of the docs (docs/images/*.png), all drawn by `routevit visualize`.
#
#   docs/scripts/make_pictures.sh                        # SAM pictures only
#   docs/scripts/make_pictures.sh runs/cifar10_blvit     # + CIFAR-10 pictures of a trained run
#   docs/scripts/make_pictures.sh RUN CIFAR_DIR          # CIFAR_DIR default: /work/shared/data/cifar10/train
#
# SAM: a blvit_sam_b_t encoder with RANDOM weights (seed 0; no trained big.LITTLE SAM weights are
# available offline) on scikit-image's bundled photographs. These pictures show the mechanics of
# per-window routing (the same k in every window, window padding never chosen), not learned
# importance.
#
# CIFAR-10: RUN is a `routevit train` run folder (or checkpoint directory) of a big.LITTLE model;
# the images are the held-out validation files (the last of each class, not trained on), read
# from CIFAR_DIR and never copied into the repository.
#
# Environment: PYTHON (default: python), the interpreter with routevit's dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
OUT=docs/images
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
visualize() { "$PY" -m routevit.cli visualize "$@"; }

# --- SAM: random-weight blvit_sam_b_t on skimage's astronaut (square) and coffee (3:2, padded)
"$PY" - "$TMP" <<'PY'
import sys

import torch
from PIL import Image
from skimage import data

from routevit import create_model

tmp = sys.argv[1]
Image.fromarray(data.astronaut()).save(f"{tmp}/astronaut.png")
Image.fromarray(data.coffee()).save(f"{tmp}/coffee.png")
torch.manual_seed(0)
torch.save(create_model("blvit_sam_b_t").state_dict(), f"{tmp}/blvit_sam_b_t_random.pth")
PY
for name in astronaut coffee; do
  visualize "$TMP/blvit_sam_b_t_random.pth" "$TMP/$name.png" --model blvit_sam_b_t \
    --out "$OUT/sam_random_$name.png"
done

# --- CIFAR-10: a trained run's routes on held-out images
if [[ $# -ge 1 ]]; then
  RUN=$1
  CIFAR=${2:-/work/shared/data/cifar10/train}
  for class in airplane cat dog ship truck; do
    image=$(ls "$CIFAR/$class" | sort | tail -n 1)  # held out by holdout_per_class
    visualize "$RUN" "$CIFAR/$class/$image" --cell 24 --out "$OUT/cifar10_$class.png"
  done
fi
ls -l "$OUT"
