#!/usr/bin/env bash
# Regenerate the accuracy tables of docs/results.md (issue 6): every method on every GLUE task,
# full data and few-shot (200 examples), as two grids running side by side, one CPU core each.
# Cells already in results/<grid>/ are kept, so an interrupted run resumes; delete a cell's JSON
# to train it again. Seed 1 on MiniLM takes about 6.5 core-hours per grid (about 3.5 hours on 2 cores).
#   bash scripts/reproduce-accuracy.sh --data ../shared/data [--backbone minilm] [--seeds "1 2 3"] [--tasks "rte mrpc"]
set -euo pipefail
cd "$(dirname "$0")/.."

data=""
backbone="minilm"
seeds="1"
tasks="rte mrpc stsb cola wnli sst2 qnli mnli qqp"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --backbone) backbone="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    *) echo "unknown argument $1; usage: $0 --data PATH [--backbone NAME] [--seeds \"1 2 3\"] [--tasks \"rte mrpc\"]" >&2; exit 2 ;;
  esac
done
if [[ -z "$data" ]]; then
  echo "--data is required: the folder holding <task>/train.jsonl (e.g. ../shared/data)" >&2
  exit 2
fi

bash scripts/setup.sh
steps=1000
seq=64
budget=(--steps "$steps" --eval-every 500 --max-seq-length "$seq" --max-dev-examples 2000 --threads 1)
read -r -a task_list <<< "$tasks"
read -r -a seed_list <<< "$seeds"
if [[ ${#seed_list[@]} -eq 1 ]]; then seed_label="seed $seeds"; else seed_label="seeds $seeds"; fi
label="$steps steps x 16, seq $seq, $seed_label"

grid() {  # grid CORE NAME [EXTRA ARGS...]
  local core="$1" name="$2"
  shift 2
  taskset -c "$core" .venv/bin/spartan reproduce grid --data "$data" --backbone "$backbone" \
    --tasks "${task_list[@]}" --seeds "${seed_list[@]}" "${budget[@]}" "$@" \
    --out "results/$name-$backbone" --checkpoints "runs/$name-$backbone" \
    > "runs/$name-$backbone.log" 2>&1
}

mkdir -p runs
grid 0 glue --title "$backbone, GLUE dev, $label" &
full=$!
grid 1 fewshot --few-shot --title "$backbone, few-shot (200 examples), $label" &
few=$!
echo "grids running (logs: runs/glue-$backbone.log, runs/fewshot-$backbone.log)"
status=0
wait "$full" || status=$?
wait "$few" || status=$?
cat "results/glue-$backbone/table.md" "results/fewshot-$backbone/table.md" 2>/dev/null || true
exit "$status"
