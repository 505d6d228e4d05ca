#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one prepared run (one CUDA machine, 16 cores):
#   bash benchmarks/device_check.sh [pretrain|e2e|tests|transfer|all ...]   (default: all)
# pretrain: each method's ResNet-50 bound, model alone eager / CUDA graph, data pipeline,
#           CARE and BYOL end to end through the Trainer;
# e2e:      CARE and BYOL model alone and end to end with --cuda-graph off and auto;
# tests:    the CUDA tests (pretraining, CUDA graph, classification) and the resume tests;
# transfer: bare step vs runner of every detection protocol (steady state separated), the
#           classification loop against its frozen forward, the recognition costs.
# Logs and JSON go to $OUT (default: benchmarks/out). Each part has a time limit, so a hang
# costs one part, not the run. Where the detectron2 stack is missing, wheels in .whl/ are
# installed first (see docs/performance.md).
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
parts=("${@:-all}")
[[ " ${parts[*]} " == *" all "* ]] && parts=(pretrain tests transfer)
cpu=$(python3 -c "import torch; print(int(not torch.cuda.is_available()))")
if ! python3 -c "import detectron2, fvcore" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
start=$(date +%s)
stamp() { echo "== $1 (+$(( $(date +%s) - start )) s)"; }
python3 -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')"

# CPU rehearsal: the same commands at toy sizes (CPU=1 or no CUDA)
small() { if [[ $cpu == 1 ]]; then echo "$2"; else echo "$1"; fi; }

for part in "${parts[@]}"; do
  case $part in
  pretrain)
    stamp "pretraining: bounds, model alone (eager / graph), data, end to end"
    timeout 240 python3 benchmarks/speed/pretrain_step.py --methods care byol simsiam \
      $(small "--workers 16 --data-images 2048 --pipelines device" \
              "--device cpu --arch resnet18 --size 64 --batch 8 --steps 2 --warmup 1 --workers 2 --data-images 32") \
      --end-to-end care byol --json "$OUT/pretrain.json" 2>&1 | grep -v "it/s\]" | tail -40
    ;;
  e2e)
    stamp "end to end: --cuda-graph off / auto"
    timeout 200 python3 benchmarks/speed/pretrain_step.py --methods care byol --no-bound \
      $(small "--workers 16 --data-images 2048 --pipelines device" \
              "--device cpu --arch resnet18 --size 64 --batch 8 --steps 2 --warmup 1 --workers 2 --data-images 32") \
      --end-to-end care byol --e2e-graph both --json "$OUT/e2e.json" 2>&1 | grep -v "it/s\]" | tail -20
    ;;
  tests)
    stamp "CUDA tests and resume tests"
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider -rP $(small "-n 6" "") \
      tests/pretrain/test_cuda_graph.py tests/pretrain/test_cuda.py tests/transfer/test_cls_cuda.py \
      "tests/pretrain/test_runs.py::test_resume_is_exact" 2>&1 \
      | grep -E "passed|failed|error|Error|max \|param|assert|^FAILED|^E " | tail -60
    ;;
  transfer)
    stamp "detection: bare step vs runner (steady state = last 20 iterations)"
    timeout 240 python3 benchmarks/speed/transfer_step.py --no-amp \
      $(small "--iters 10 --warmup 3 --runner-iters 40 --protocols voc_c4_24k coco_c4_1x coco_fpn_1x" "--smoke --device cpu --iters 2 --warmup 1 --runner-iters 0 --protocols voc_c4_24k") \
      --json "$OUT/detection.json" 2>&1 | tail -8
    stamp "segmentation (ADE20K UPerNet): bare step vs runner, seed-hours estimate"
    timeout 150 python3 benchmarks/speed/transfer_step.py --no-amp --protocols ade20k_upernet \
      $(small "--iters 10 --warmup 3 --runner-iters 40" "--smoke --device cpu --iters 2 --warmup 1 --runner-iters 0") \
      --json "$OUT/segmentation.json" 2>&1 | tail -4
    stamp "classification loop vs frozen forward"
    timeout 90 python3 benchmarks/speed/linear_step.py \
      $(small "--workers 16 --steps 20" "--device cpu --arch resnet18 --batch 8 --steps 2 --workers 2") \
      --json "$OUT/linear.json" 2>&1 | tail -8
    stamp "recognition: extraction, sweep, fine-tuning step"
    timeout 90 python3 benchmarks/speed/recognition.py --solvers torch --fits 1 \
      $(small "--images 2048 --workers 16 --batch 256 --n 50000 --finetune-steps 10 --finetune-batch 64" \
              "--device cpu --images 16 --workers 2 --batch 8 --n 2000 --val 500 --finetune-steps 1 --finetune-batch 4") \
      --json "$OUT/recognition.json" 2>&1 | tail -14
    ;;
  *) echo "unknown part $part (pretrain, e2e, tests, transfer, all)"; exit 2 ;;
  esac
done
stamp "done"
