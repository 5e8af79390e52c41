#!/usr/bin/env python3
"""Validate a CSV trace (header; every free matches a live alloc; no double alloc) and print
its event count and peak live bytes. Usage: python3 scripts/check_trace.py TRACE.csv..."""
import csv
import sys


def check(path):
    live = {}
    cur = peak = n = 0
    with open(path) as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            addr = int(row["ptr"], 0)
            size = int(row["size"] or 0)
            if row["action"] == "alloc":
                if addr in live:
                    raise SystemExit(f"{path}:{line}: {hex(addr)} allocated while live")
                live[addr] = size
                cur += size
                peak = max(peak, cur)
            elif row["action"] == "free":
                if addr not in live:
                    raise SystemExit(f"{path}:{line}: free of {hex(addr)}, never allocated")
                cur -= live.pop(addr)
            else:
                raise SystemExit(f"{path}:{line}: bad action {row['action']}")
            n += 1
    print(f"{path}: {n} events, peak live {peak} bytes ({peak / 2**20:.1f} MiB), {len(live)} live at end")


for p in sys.argv[1:]:
    check(p)
