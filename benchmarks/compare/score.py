"""Scores an engine's detections against the ground truth of `tidemark-loadtest generate`.

A detection is one incident (tidemark) or one rule match (EQL sequence, Sigma correlation or
single-event rule) on one workload, with the kill-chain stages its evidence supports. Two
recalls are reported:

- `recall`: attacks for which one detection alone carries every expected stage, which is what
  tidemark's one incident per workload gives an analyst;
- `recall_any_stages_union`: attacks whose detections together, on the attacked workload, carry
  every expected stage; this credits an engine whose rules each see part of the chain and
  leaves the joining to an analyst or a SIEM's alert grouping.

`precision` is over workloads: detected workloads that are attacked, over all detected
workloads. Benign workloads are single records spread over the fleet, so any detection on one
is a false positive. A detection that names no workload can be neither; it is counted apart,
as `detections_without_workload`, so that it is seen rather than silently dropped.
"""

from collections import defaultdict


def score(truth: dict, detections: list) -> dict:
    """`detections`: dicts with `workload` (the truth's key) and `stages` (a list)."""
    attacks = {a["workload"]: set(a["stages"]) for a in truth["attacks"]}
    by_workload = defaultdict(list)
    without_workload = 0
    for detection in detections:
        if detection.get("workload"):
            by_workload[detection["workload"]].append(set(detection["stages"]))
        else:
            without_workload += 1

    found_whole, found_union, per_attack = 0, 0, []
    for attack in truth["attacks"]:
        expected = set(attack["stages"])
        found = by_workload.get(attack["workload"], [])
        whole = any(expected <= stages for stages in found)
        union = expected <= set().union(*found) if found else False
        found_whole += whole
        found_union += union
        per_attack.append(
            {
                "workload": attack["workload"],
                "pattern": attack["pattern"],
                "expected": sorted(expected),
                "found_in_one_detection": whole,
                "found_across_detections": union,
            }
        )
    detected = set(by_workload)
    true_positive = len(detected & set(attacks))
    total = len(truth["attacks"])
    by_pattern = defaultdict(lambda: [0, 0])
    for attack in per_attack:
        by_pattern[attack["pattern"]][0] += attack["found_in_one_detection"]
        by_pattern[attack["pattern"]][1] += 1
    return {
        "detections": len(detections),
        "detections_without_workload": without_workload,
        "detected_workloads": len(detected),
        "false_positive_workloads": sorted(detected - set(attacks)),
        "recall": found_whole / total if total else 1.0,
        "recall_any_stages_union": found_union / total if total else 1.0,
        "precision": true_positive / len(detected) if detected else 1.0,
        "recall_by_pattern": {p: f"{found}/{n}" for p, (found, n) in sorted(by_pattern.items())},
        "per_attack": per_attack,
    }
