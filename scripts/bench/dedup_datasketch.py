"""MinHashLSH dedup with datasketch, the same job as `ft-filter --dedup minhash`.

usage: dedup_datasketch.py IN OUT THRESHOLD NUM_PERM SHINGLE
Same text treatment: lowercase, whitespace collapsed, word shingles of SHINGLE words (the whole text
when shorter); keeps the first record in input order whose query finds no kept candidate. Writes the
kept records' lines to OUT and prints the seconds spent on stderr.
"""
import sys
import time

from datasketch import MinHash, MinHashLSH

src, out, threshold, num_perm, k = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
import json

start = time.perf_counter()
lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
print(f"datasketch: {lsh.b} bands x {lsh.r} rows", file=sys.stderr)
with open(src, encoding="utf-8") as r, open(out, "w", encoding="utf-8") as w:
    for n, line in enumerate(r):
        rec = json.loads(line)
        words = " ".join(rec["text"].lower().split()).split(" ")
        if len(words) < k:
            sh = [" ".join(words)]
        else:
            sh = [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in sh])
        if lsh.query(m):
            continue
        lsh.insert(str(n), m, check_duplication=False)
        w.write(line)
print(f"{time.perf_counter() - start:.3f}", file=sys.stderr)
