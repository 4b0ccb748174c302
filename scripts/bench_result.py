#!/usr/bin/env python3
"""One benchmark result as JSON, for scripts/bench.sh (which merges it into results.json).

    bench_result.py kernel    OUT TAG INSNS BYTES RSS_DECODE RSS_CHECK RSS_JOBS1
    bench_result.py synthetic OUT TAG MB INSNS BYTES RSS_DECODE RSS_CHECK FINDINGS RSS_RUNS
    bench_result.py turns     OUT NAME RUNS      (merges timeit_turns' runs into OUT/NAME.json)

Reads OUT/TAG-<run>.json (hyperfine exports) and OUT/TAG-phases.txt (`stackval check --time`:
phase lines `stackval: time: NAME  MS ms`, and the steps inside a phase indented under it).
"""
import json
import statistics
import re
import sys

PHASE = re.compile(r"stackval: time: (\S+) +([\d.]+) ms")
STEP = re.compile(r"stackval: time:   (\S.*?) +([\d.]+) ms(?: +cpu +([\d.]+) ms)?")


def timing(out, tag, name):
    """Wall time (median, spread, and every run in order: run i of two results made by
    bench.sh's timeit_turns is from the same round), and the median user and system time."""
    r = json.load(open(f"{out}/{tag}-{name}.json"))["results"][0]
    return dict(median=r["median"], stddev=r["stddev"] or 0.0, min=r["min"], max=r["max"],
                runs=len(r["times"]), times=r["times"],
                user=statistics.median(r["user"]) if "user" in r else None,
                system=statistics.median(r["system"]) if "system" in r else None)


def phases(out, tag):
    """Phase wall times, step wall times and step CPU times (all threads), in seconds."""
    top, steps, cpu, current = {}, {}, {}, None
    for line in open(f"{out}/{tag}-phases.txt"):
        if m := PHASE.match(line):
            current = m.group(1)
            top[current] = float(m.group(2)) / 1e3
        elif (m := STEP.match(line)) and current:
            steps[f"{current}: {m.group(1)}"] = float(m.group(2)) / 1e3
            if m.group(3):
                cpu[f"{current}: {m.group(1)}"] = float(m.group(3)) / 1e3
    return top, steps, cpu


def turns(out, name, runs):
    """Merges the one-run hyperfine exports OUT/NAME.turn<r>.json of bench.sh's timeit_turns
    into OUT/NAME.json, in hyperfine's form."""
    times, user, system = [], [], []
    for r in range(1, runs + 1):
        one = json.load(open(f"{out}/{name}.turn{r}.json"))["results"][0]
        times += one["times"]
        user.append(one["user"])
        system.append(one["system"])
    result = dict(command=name, times=times, user=user, system=system, mean=statistics.mean(times),
                  median=statistics.median(times),
                  stddev=statistics.stdev(times) if len(times) > 1 else None,
                  min=min(times), max=max(times))
    json.dump({"results": [result]}, open(f"{out}/{name}.json", "w"), indent=1)


def main():
    kind, out, tag, *rest = sys.argv[1:]
    if kind == "turns":
        turns(out, tag, int(rest[0]))
        return
    top, steps, cpu = phases(out, tag)
    if kind == "kernel":
        insns, nbytes, rd, rc, rj = rest
        result = dict(insns=int(insns), bytes=int(nbytes),
                      decode=timing(out, tag, "decode"), check=timing(out, tag, "check"),
                      check_j1=timing(out, tag, "check-j1"),
                      decode_j1=timing(out, tag, "decode-j1"),
                      progress_default=timing(out, tag, "progress-default"),
                      progress_off=timing(out, tag, "progress-off"),
                      rss_kb=dict(decode=int(rd), check=int(rc), check_j1=int(rj)))
    else:
        mb, insns, nbytes, rd, rc, findings, rss_runs = rest
        result = dict(size_mb=int(mb), insns=int(insns), bytes=int(nbytes),
                      decode=timing(out, tag, "decode"), check=timing(out, tag, "check"),
                      rss_kb=dict(decode=int(rd), check=int(rc)), rss_runs=int(rss_runs),
                      findings=int(findings))
    result.update(phases=top, steps=steps, steps_cpu=cpu)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
