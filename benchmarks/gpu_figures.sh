#!/usr/bin/env bash
# The scale figures of one GPU in one go: the time limits below sum to 535 s, so it ends within 9 minutes. Each benchmark's JSON line
# goes into $OUT/figures.jsonl as {"run": name, "result": …}; everything else into $OUT/log.txt.
# Run from the repository root with icam importable:  bash benchmarks/gpu_figures.sh
set -u
OUT=${OUT:-gpu-figures}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
exec > >(tee -a "$OUT/log.txt") 2>&1
run() {  # name, time limit (s), command…: a failing or slow benchmark does not stop the others
  local name=$1 limit=$2 line rc; shift 2
  echo "== $name ($(date +%T))"
  timeout "$limit" "$@" > "$OUT/.stdout" 2> "$OUT/.stderr"; rc=$?
  line=$(tail -n 1 "$OUT/.stdout"); tail -n 14 "$OUT/.stderr"; rm -f "$OUT/.stdout" "$OUT/.stderr"
  echo "   exit $rc ($(date +%T)): $line"
  [[ $line == "{"* ]] && printf '{"run": "%s", "result": %s}\n' "$name" "$line" >> "$OUT/figures.jsonl"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

# Full-size 3D training step: fp32 eager vs mixed precision, batch 2, then the largest batch in 24 GB.
run train_step_3d 190 "$PY" benchmarks/train_step.py --dims 3 --shape 128 160 128 --accelerator gpu \
    --modes fp32 bf16 bf16-cl bf16-ckpt --warmup 3 --iterations 10 \
    --max-batch --max-batch-modes fp32 bf16 bf16-ckpt --memory-gib 24
# The authors' 2D setting, for comparison with the CPU figures.
run train_step_2d 40 "$PY" benchmarks/train_step.py --shape 128 128 --accelerator gpu --modes fp32 bf16-cl \
    --warmup 5 --iterations 20
# Mean + variance FA maps of one full-size volume.
run explain_3d 50 "$PY" benchmarks/explain.py --shape 128 160 128 --width 16 --samples 25 100 --repeats 2 \
    --precision 32-true bf16-mixed \
    --device cuda
# Cache vs .nii.gz decoding, to the GPU, at 128×160×128.
run data_loading 55 "$PY" benchmarks/data_loading.py --shape 128 160 128 --n 24 --workers 0 8 \
    --accelerator gpu --passes 2
# The CLI end to end on the GPU: 3D squares, bf16, channels-last, a few steps.
run cli_train_3d 40 "$PY" -m icam train -q --accelerator gpu --precision bf16-mixed --steps 40 \
    --out "$OUT/runs" --name cli-3d --set data.spatial_dims=3 --set data.image_size=64 \
    --set runtime.channels_last=true --set train.validate_every=40 --set train.log_every=10
printf '{"run": "cli_train_3d", "result": %s}\n' "$(tr -d '\n' < "$OUT/runs/cli-3d/summary.json")" \
    >> "$OUT/figures.jsonl" 2>/dev/null
rm -rf "$OUT/runs"
# Occlusion of one full-size volume: positions bounded, many per forward pass.
run occlusion_3d 75 "$PY" benchmarks/occlusion.py --shape 128 160 128 --device cuda
# Regional compilation (each repeated block once) and CUDA graphs on top: first_step_s is the
# compile time; slow starts, so last and on their own limit.
run train_step_3d_regional "${COMPILE_LIMIT:-85}" "$PY" benchmarks/train_step.py --dims 3 --shape 128 160 128 \
    --accelerator gpu --modes bf16-regional bf16-regional-graphs --warmup 3 --iterations 10
