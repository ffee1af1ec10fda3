"""Runs the EQL rules over flat events with the Elastic EQL Python engine (`pip install eql`).

Usage: eql_run.py RULES_JSON EVENTS_NDJSON MATCHES_JSON

Every query is loaded into one engine, and the events are streamed through it once, in the
order of the file (event time). Each match is written as `{rule, workload, stages, time}`,
where the workload is that of the match's last event (the one that completed it).
"""

import json
import sys

import eql


def main(rules_path: str, events_path: str, out_path: str) -> int:
    rules = json.loads(open(rules_path, encoding="utf-8").read())
    # Timestamps are milliseconds: 1,000 ticks a second.
    engine = eql.PythonEngine({"time_unit": 1000})
    matches = []
    by_name = {rule["name"]: rule for rule in rules}

    def on_match(output):
        rule = by_name[output.analytic_id]
        last = output.events[-1].data
        matches.append(
            {
                "rule": rule["name"],
                "workload": last.get("workload_key"),
                "stages": rule["stages"],
                "time": last.get("time"),
            }
        )

    engine.add_output_hook(on_match)
    for rule in rules:
        query = eql.parse_query(rule["query"], implied_any=True, implied_base=True)
        engine.add_analytic(eql.ast.EqlAnalytic(query=query, metadata={"id": rule["name"]}))

    with open(events_path, encoding="utf-8") as f:
        engine.stream_events(json.loads(line) for line in f if line.strip())
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(matches, out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
