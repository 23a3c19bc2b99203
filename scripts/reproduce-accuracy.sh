#!/usr/bin/env bash
# Regenerate the accuracy tables of docs/results.md (issue 6): every method on every GLUE task,
# full data (grid "glue") and few-shot, 200 examples (grid "fewshot"). With both grids, each runs
# on one CPU core; with one grid (--grids glue), its methods are split over the two cores
# (full fine-tuning and the probe on core 0, SPARTAN and the two adapters on core 1: roughly equal cost).
# Cells already in results/<grid>-<backbone>/ are kept, so an interrupted run resumes; delete a
# cell's JSON to train it again. Seed 1 on MiniLM takes about 6.5 core-hours per grid.
#   bash scripts/reproduce-accuracy.sh --data ../shared/data [--backbone minilm] [--seeds "1 2 3"]
#        [--tasks "rte mrpc"] [--grids "glue fewshot"]
set -euo pipefail
cd "$(dirname "$0")/.."

data=""
backbone="minilm"
seeds="1"
tasks="rte mrpc stsb cola wnli sst2 qnli mnli qqp"
grids="glue fewshot"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --backbone) backbone="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --grids) grids="$2"; shift 2 ;;
    *) echo "unknown argument $1; usage: $0 --data PATH [--backbone NAME] [--seeds \"1 2 3\"] [--tasks \"rte mrpc\"] [--grids \"glue fewshot\"]" >&2; exit 2 ;;
  esac
done
if [[ -z "$data" ]]; then
  echo "--data is required: the folder holding <task>/train.jsonl (e.g. ../shared/data)" >&2
  exit 2
fi
read -r -a grid_list <<< "$grids"
for name in "${grid_list[@]}"; do
  case "$name" in
    glue|fewshot) ;;
    *) echo "unknown grid $name; choose from: glue fewshot" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh
steps=1000
seq=64
budget=(--steps "$steps" --eval-every 500 --max-seq-length "$seq" --max-dev-examples 2000 --threads 1)
read -r -a task_list <<< "$tasks"
read -r -a seed_list <<< "$seeds"
if [[ ${#seed_list[@]} -eq 1 ]]; then seed_label="seed $seeds"; else seed_label="seeds $seeds"; fi
label="$steps steps x 16, seq $seq, $seed_label"

declare -A title=(
  [glue]="$backbone, GLUE dev, $label"
  [fewshot]="$backbone, few-shot (200 examples), $label"
)
declare -A grid_args=([glue]="" [fewshot]="--few-shot")

grid() {  # grid CORE NAME LOG METHODS: train the missing cells of one grid, pinned to one core
  local core="$1" name="$2" log="$3" methods="$4"
  local -a method_list extra
  read -r -a method_list <<< "$methods"
  read -r -a extra <<< "${grid_args[$name]}"
  taskset -c "$core" .venv/bin/spartan reproduce grid --data "$data" --backbone "$backbone" \
    --tasks "${task_list[@]}" --seeds "${seed_list[@]}" --methods "${method_list[@]}" "${budget[@]}" \
    "${extra[@]}" --title "${title[$name]}" \
    --out "results/$name-$backbone" --checkpoints "runs/$name-$backbone" > "$log" 2>&1
}

mkdir -p runs
pids=()
if [[ ${#grid_list[@]} -eq 1 ]]; then
  name="${grid_list[0]}"
  grid 0 "$name" "runs/$name-$backbone-core0.log" "full probe" &
  pids+=($!)
  grid 1 "$name" "runs/$name-$backbone-core1.log" "spartan pfeiffer houlsby" &
  pids+=($!)
else
  core=0
  for name in "${grid_list[@]}"; do
    grid "$core" "$name" "runs/$name-$backbone.log" "spartan pfeiffer houlsby full probe" &
    pids+=($!)
    core=$(( (core + 1) % 2 ))
  done
fi
echo "grids running (logs: runs/*-$backbone*.log)"
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
# Each grid process rebuilds its table from every cell in the folder when it ends, so the one
# that ends last has written the whole table.
for name in "${grid_list[@]}"; do
  cat "results/$name-$backbone/table.md" 2>/dev/null || true
done
exit "$status"
