"""Derives QA-shaped records (the fields ft-qa-synth and ft-score write) from the document corpus.

usage: make_qa_corpus.py CORPUS OUT
Deterministic: the same corpus gives the same bytes. Answers are runs of paragraphs of ~400-800 chars.
"""
import hashlib
import json
import os
import sys

src, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
with open(src, encoding="utf-8") as r, open(tmp, "w", encoding="utf-8") as w:
    for line in r:
        doc = json.loads(line)
        paras = [p.strip() for p in doc["text"].split("\n\n") if p.strip()]
        answer, index = [], 0
        for p in paras:
            answer.append(p)
            if sum(len(a) for a in answer) < 400 and p is not paras[-1]:
                continue
            text = "\n\n".join(answer)[:800]
            answer = []
            chunk_id = hashlib.sha256(f"{doc['id']}\x1f{index}\x1f".encode()).hexdigest()[:32]
            qa_id = hashlib.sha256(f"{chunk_id}\x1fq\x1f".encode()).hexdigest()[:32]
            h = int(qa_id[:8], 16)
            overall = 5 + (h % 11) / 2  # 5.0 .. 10.0
            words = " ".join(text.split()[:6])
            rec = {
                "id": qa_id,
                "chunk_id": chunk_id,
                "doc_id": doc["id"],
                "question": f"What does {doc['source']} say about {words}?",
                "answer": text,
                "lang": "en" if h % 10 else "de",
                "gen": {"model": "bench-offline", "temperature": 0.7, "prompt_sha": qa_id[:16]},
                "score": {
                    "relevance": overall,
                    "accuracy": overall,
                    "clarity": 5 + (h >> 8) % 6,
                    "grounding": overall,
                    "overall": overall,
                },
                "verdict": "pass" if overall >= 8 else ("review" if overall >= 6 else "fail"),
            }
            w.write(json.dumps(rec, ensure_ascii=False) + "\n")
            index += 1
os.replace(tmp, out)
