# Sourced by the pipelines in scripts/: checks BACKEND (local, openai or extractive [local]) and sets
# `llm`, the flags that say who writes pairs and summaries, and `judge`, ft-score's flags for the same
# model. The local model is $model when the script set it, else MODEL, else SmolLM2 (fetched on first
# use only, so the other backends need no download).
backend=${BACKEND:-local}
case $backend in
  local)
    model=${model:-${MODEL:-$("$(dirname "${BASH_SOURCE[0]}")/../fetch-smollm2")}}
    llm=(--backend local --model "$model") judge=(--judge local --model "$model" --judge-weight 0.25) ;;
  openai) llm=(--backend openai --model "${MODEL_API:?set MODEL_API to the model name of the endpoint}")
    judge=(--judge openai --model "$MODEL_API") ;;
  extractive) llm=(--backend extractive) judge=(--judge none) ;;
  *) echo "$(basename "$0"): BACKEND is local, openai or extractive, not $backend" >&2; exit 2 ;;
esac
