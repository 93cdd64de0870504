"""The end of scripts/demo's summary: judge scores, test loss before/after, a few completions.

    python3 scripts/lib/demo_summary.py OUT_DIR
"""

import json
import sys
from pathlib import Path


def records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def one_line(text, width=150):
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def main(out):
    out = Path(out)
    scored = records(out / "scored.jsonl")
    judge = [r["score"]["judge"]["overall"] for r in scored if "judge" in r.get("score", {})]
    heur = [r["score"]["heuristic"] for r in scored]
    if judge:
        print(
            f"judge overall (SmolLM2, weighted): {min(judge):.1f}..{max(judge):.1f}, "
            f"heuristic: {min(heur):.1f}..{max(heur):.1f}; "
            f"{sum(1 for line in open(out / 'dropped.jsonl', encoding='utf-8'))} pairs dropped by ft-filter"
        )
    base = json.loads((out / "eval-base.json").read_text())
    tuned = json.loads((out / "eval-adapter.json").read_text())
    print(
        f"test loss on {base['examples']} examples ({base['targets']} answer tokens): "
        f"{base['loss']:.3f} (perplexity {base['perplexity']:.1f}) without the adapter, "
        f"{tuned['loss']:.3f} (perplexity {tuned['perplexity']:.1f}) with it"
    )
    print(f"adapter: {out / 'adapter'} (report: {out / 'adapter' / 'training_report.json'})")
    tests = records(out / "test.alpaca.jsonl")
    before = records(out / "test.base.jsonl")
    after = records(out / "test.adapter.jsonl")
    if not (len(tests) == len(before) == len(after)):
        sys.exit(f"demo: {len(tests)} test records but {len(before)} and {len(after)} completions")
    print("\nthe first test questions: reference answer, then SmolLM2 without and with the adapter")
    for t, b, a in list(zip(tests, before, after))[:3]:
        print(f"Q: {one_line(t['instruction'])}")
        print(f"  reference: {one_line(t['output'])}")
        print(f"  base:      {one_line(b['completion'])}")
        print(f"  adapter:   {one_line(a['completion'])}")
    export = json.loads((out / "export.json").read_text())
    v = export["verify"]
    print(
        f"\nexported: {out / 'ollama'} ({', '.join(export['files'])}); logits within "
        f"{v['relative']:.1e} of max |logit| of model + adapter, greedy tokens agree "
        f"{100 * v['top1_agreement']:.0f}%, tokenizer ids equal: {v['tokenizer_ids_equal']}"
    )
    print(f"run it: {export['next']} && ollama run ftkit-demo")


if __name__ == "__main__":
    main(sys.argv[1])
