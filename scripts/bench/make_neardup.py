"""A dedup benchmark set with planted near duplicates, and its truth.

usage: make_neardup.py CORPUS OUT [N]
Takes N distinct paragraphs (>= 25 words, exact-deduplicated after lowercasing and collapsing
whitespace) from the first copy of the corpus, then plants, each at a later position than its source:
  - near duplicates ("near-" ids) of 20% of them: 1 to 3 words replaced or deleted (true 3-shingle
    Jaccard printed below; mostly >= 0.8), which a dedup at threshold 0.8 should drop;
  - variants ("var-" ids) of 10% of them: 35% of the words replaced (Jaccard ~0.1-0.3), which it
    should keep.
Records are {"id","text"}; OUT.truth.tsv lists each planted id with its true Jaccard. Deterministic.
"""
import json
import random
import sys

src, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 40000
rng = random.Random(42)


def norm(t):
    return " ".join(t.lower().split())


def shingles(t, k=3):
    w = norm(t).split(" ")
    if len(w) < k:
        return {" ".join(w)}
    return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}


def jaccard(a, b):
    a, b = shingles(a), shingles(b)
    return len(a & b) / len(a | b)


base, seen = [], set()
with open(src, encoding="utf-8") as r:
    for line in r:
        doc = json.loads(line)
        if not doc["source"].endswith("#0"):
            break
        for p in doc["text"].split("\n\n"):
            key = norm(p)
            if len(key.split(" ")) >= 25 and key not in seen:
                seen.add(key)
                base.append(" ".join(p.split()))
        if len(base) >= n:
            break
base = base[:n]
vocab = sorted({w for p in base[:2000] for w in p.split()})

records = [("b%06d" % i, t) for i, t in enumerate(base)]
planted = []
for i in rng.sample(range(len(base)), len(base) // 5):
    words = base[i].split()
    for _ in range(rng.randint(1, 3)):
        j = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[j] = rng.choice(vocab)
        else:
            del words[j]
    planted.append(("near-%06d" % i, i, " ".join(words)))
for i in rng.sample(range(len(base)), len(base) // 10):
    words = base[i].split()
    for j in rng.sample(range(len(words)), int(len(words) * 0.35)):
        words[j] = rng.choice(vocab)
    planted.append(("var-%06d" % i, i, " ".join(words)))
# Insert each planted record somewhere after its source.
later = {}
for pid, i, text in planted:
    later.setdefault(rng.randint(i, len(base) - 1), []).append((pid, text))
final = []
for pos, rec in enumerate(records):
    final.append(rec)
    final.extend(later.get(pos, []))
with open(out, "w", encoding="utf-8") as w:
    for rid, text in final:
        w.write(json.dumps({"id": rid, "text": text}, ensure_ascii=False) + "\n")
with open(out + ".truth.tsv", "w") as w:
    for pid, i, t in planted:
        w.write(f"{pid}\t{jaccard(base[i], t):.4f}\n")
js = sorted(jaccard(base[i], t) for pid, i, t in planted if pid.startswith("near-"))
vs = sorted(jaccard(base[i], t) for pid, i, t in planted if pid.startswith("var-"))
q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]
print(
    f"neardup set: {len(final)} records, {len(js)} near duplicates (Jaccard min {js[0]:.2f}, p10 {q(js, .1):.2f}, "
    f"median {q(js, .5):.2f}; {sum(j >= 0.8 for j in js)} at >= 0.8), {len(vs)} variants (Jaccard max {vs[-1]:.2f})",
    file=sys.stderr,
)
