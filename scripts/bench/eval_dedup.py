"""Precision and recall of a dedup run against the planted truth of make_neardup.py.

usage: eval_dedup.py IN KEPT TRUTH THRESHOLD
A dropped record is a true positive when it is a planted near duplicate whose true 3-shingle Jaccard
with its source is >= THRESHOLD; recall counts those. Dropped planted near duplicates below the
threshold are reported apart ("soft"), and count as false positives in the strict precision.
"""
import json
import sys

src, kept_path, truth_path, threshold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ids = [json.loads(l)["id"] for l in open(src, encoding="utf-8")]
kept = {json.loads(l)["id"] for l in open(kept_path, encoding="utf-8")}
truth = {}
for line in open(truth_path):
    pid, j = line.split("\t")
    truth[pid] = float(j)
dropped = [i for i in ids if i not in kept]
pos = {i for i, j in truth.items() if i.startswith("near-") and j >= threshold}
soft = {i for i, j in truth.items() if i.startswith("near-") and j < threshold}
tp = sum(1 for i in dropped if i in pos)
soft_dropped = sum(1 for i in dropped if i in soft)
other = len(dropped) - tp - soft_dropped
precision = tp / len(dropped) if dropped else 1.0
recall = tp / len(pos) if pos else 1.0
print(
    f"dropped {len(dropped)}: precision {precision:.3f}, recall {recall:.3f} "
    f"(near duplicates >= {threshold}: {tp}/{len(pos)} dropped; below: {soft_dropped}/{len(soft)} dropped; "
    f"sources and variants dropped: {other})"
)
