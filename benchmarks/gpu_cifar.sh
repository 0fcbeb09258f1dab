#!/usr/bin/env bash
# The fast GPU path on CIFAR-10-LT IF100 (configs/cifar10_lt_if100_acl_gpu.yaml) for Balanced Softmax with 4 views
# and for BS + ACL: prints each epoch's time, the total training time and the Many / Medium / Few / All table.
#
#   benchmarks/gpu_cifar.sh PATH/cifar10_jpeg.npz            # the full 200-epoch recipe
#   benchmarks/gpu_cifar.sh PATH/cifar10_jpeg.npz 50         # shorter: milestones and warm-up scale with it
#
# Set PYTHON to the interpreter that has ltcl (default: python3), OUT for the run directory (default: runs).
set -euo pipefail
data=${1:?usage: benchmarks/gpu_cifar.sh PATH/cifar10_jpeg.npz [EPOCHS]}
epochs=${2:-200}
python=${PYTHON:-python3}
out=${OUT:-runs}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for objective in bs bs+acl; do
  name="gpu_${objective/+/_}_${epochs}ep"
  start=$(date +%s)
  "$python" -m ltcl.cli train -c configs/cifar10_lt_if100_acl_gpu.yaml \
    --set data.root="$data" --set loss.objective="$objective" --set optim.epochs="$epochs" \
    --set optim.warmup_epochs=$(( epochs / 20 )) \
    --set optim.milestones=$(( epochs * 4 / 5 )),$(( epochs * 9 / 10 )) \
    --set train.output_dir="$out" --set train.run_name="$name"
  echo "$name: $(( $(date +%s) - start )) s wall for the whole command"
done
