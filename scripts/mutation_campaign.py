#!/usr/bin/env python3
"""Mutation campaign against `cudalloc replay` (longer than tests/mutation.rs, and with
mutations only Python makes easily: edited objects re-pickled with protocols 2-5, opcode
rewrites, memo-shared lists, deep nesting).

Usage: python3 scripts/mutation_campaign.py [--cases N] [--seed S] [--bin PATH] SEED_FILE...
Each case runs `cudalloc replay --json --capacity 64GiB CASE` under RLIMIT_AS = 4 GiB (as
`ulimit -v 4194304`) and a 60 s timeout, and is classified as the table in the README:
panic, allocation-failure abort, stack overflow, other signal, runaway (timeout), exit 0 on
structurally invalid input, exit 0 on a pickle CPython rejects, an error naming neither the
file nor a position, an error longer than 400 bytes, exit 0 with impossible figures; or
fine (exit 0 on a valid trace, exit 1 with a short error naming the file). Cases that are
not fine are kept in --keep DIR.
"""
import argparse
import collections
import io
import json
import os
import pickle
import pickletools
import random
import re
import resource
import subprocess
import sys
import tempfile

MAX_BYTES = 1 << 48
MIB = 1 << 20
CAPACITY = 64 << 30
OPCODES = b"(.]}h)qrpaeus012\x94\x95\x8c\x8a\x8bJKMNXGFILtdl\x85\x86\x87\x88\x89"


# ---- structural oracle: what a valid snapshot / CSV is, independent of the Rust reader --

def is_uint(v, cap=None):
    return type(v) is int and v >= 0 and (cap is None or v <= cap)


def snapshot_valid(obj):
    if not isinstance(obj, dict):
        return False
    traces, segs = obj.get("device_traces"), obj.get("segments")
    if not isinstance(traces, list) or not isinstance(segs, list):
        return False
    s = obj.get("allocator_settings", {})
    if not isinstance(s, dict):
        return False
    m = s.get("max_split_size", -1)
    if not (m == -1 or (type(m) is int and m > 0 and m % MIB == 0 and m // MIB >= 20)):
        return False
    g = s.get("garbage_collection_threshold", 0.0)
    if type(g) not in (int, float) or not (g == 0 or 0 < g < 1):
        return False
    if type(s.get("expandable_segments", False)) is not bool:
        return False
    r = s.get("roundup_power2_divisions", {})
    if isinstance(r, dict):
        for k, d in r.items():
            if not (type(d) is int and (d == 0 or (d > 0 and d & (d - 1) == 0))):
                return False
    for dev in traces:
        if not isinstance(dev, list):
            return False
        live = {}
        for e in dev:
            if not isinstance(e, dict) or not isinstance(e.get("action"), str):
                return False
            a = e["action"]
            if a in ("alloc", "free_completed", "segment_alloc", "segment_free",
                     "segment_map", "segment_unmap"):
                if not is_uint(e.get("addr")) or not is_uint(e.get("size"), MAX_BYTES):
                    return False
                if "stream" in e and not is_uint(e["stream"]):
                    return False
    seen = set()
    for sg in segs:
        if not isinstance(sg, dict) or not is_uint(sg.get("total_size"), MAX_BYTES):
            return False
        if not is_uint(sg.get("address")) or (sg.get("device", 0), sg["address"]) in seen:
            return False
        seen.add((sg.get("device", 0), sg["address"]))
        for b in sg.get("blocks", []):
            if not isinstance(b, dict):
                return False
            if b.get("state") in ("active_allocated", "active_pending_free"):
                if not is_uint(b.get("address")):
                    return False
    return True


def csv_valid(data):
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    lines = text.splitlines()
    if not lines:
        return False
    head = [c.strip().lower() for c in lines[0].split(",")]
    if "action" not in head or "ptr" not in head or "size" not in head:
        return False
    ia, ip, isz = head.index("action"), head.index("ptr"), head.index("size")
    live = set()
    for l in lines[1:]:
        if not l.strip():
            continue
        f = [c.strip() for c in l.split(",")]
        if '"' in l or len(f) <= max(ia, ip, isz):
            return False
        try:
            ptr = int(f[ip], 0)
            size = int(f[isz] or "0")
        except ValueError:
            return False
        if ptr < 0 or size < 0 or size > MAX_BYTES:
            return False
        action = f[ia].lower()  # cudalloc reads actions case-insensitively
        if action == "alloc":
            if size and ptr in live:
                return False
            if size:
                live.add(ptr)
        elif action == "free":
            if ptr not in live and size:
                return False
            live.discard(ptr)
        else:
            return False
    return True


# ---- mutators ------------------------------------------------------------------------

def byte_mutation(rng, d):
    d = bytearray(d)
    if not d:
        return bytes(b"\x80")
    k = rng.randrange(5)
    at = rng.randrange(len(d))
    if k == 0:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    elif k == 1:
        del d[at:]
    elif k == 2:
        del d[at:at + rng.randint(1, 64)]
    elif k == 3:
        chunk = d[at:at + rng.randint(1, 256)]
        d[at:at] = chunk * rng.randint(1, 3)
    else:
        d[at] = rng.choice(OPCODES)
    return bytes(d)


def opcode_rewrite(rng, d):
    try:
        ops = [pos for _, _, pos in pickletools.genops(d)]
    except Exception:
        return byte_mutation(rng, d)
    d = bytearray(d)
    pos = rng.choice(ops)
    d[pos] = rng.choice(OPCODES)
    return bytes(d)


BAD_VALUES = [-1, -2097152, "512", None, 1.5, 2**70, 2**48 + 1, True, [], {}]


def edit_object(rng, obj):
    """Edit a loaded snapshot in place: a field, a duplicated or dropped entry, sharing."""
    traces = obj.get("device_traces") or [[]]
    segs = obj.get("segments") or []
    k = rng.randrange(8)
    evs = [e for dev in traces if isinstance(dev, list) for e in dev if isinstance(e, dict)]
    if k == 0 and evs:
        e = rng.choice(evs)
        e[rng.choice(["addr", "size", "stream", "action"])] = rng.choice(BAD_VALUES)
    elif k == 1 and evs:
        e = rng.choice(evs)
        e.pop(rng.choice(["addr", "size", "action"]), None)
    elif k == 2 and traces and isinstance(traces[0], list) and traces[0]:
        dev = traces[0]
        i = rng.randrange(len(dev))
        dev.insert(rng.randrange(len(dev) + 1), dict(dev[i]))
    elif k == 3 and segs:
        sg = rng.choice(segs)
        if isinstance(sg, dict):
            sg[rng.choice(["total_size", "address", "device", "stream"])] = rng.choice(BAD_VALUES)
    elif k == 4:
        s = obj.setdefault("allocator_settings", {})
        if isinstance(s, dict):
            key = rng.choice(["max_split_size", "garbage_collection_threshold",
                              "expandable_segments", "roundup_power2_divisions"])
            s[key] = rng.choice(BAD_VALUES + [1, 2 * MIB, 128 * MIB, 0.5, {"1": 3}, {"3": 2}])
    elif k == 5 and traces:
        obj["device_traces"] = [traces[0]] * rng.choice([2, 100, 10000])
    elif k == 6 and segs:
        obj["segments"] = [segs[0]] * rng.choice([2, 100, 10000])
    else:
        x = []
        for _ in range(rng.choice([1000, 100000])):
            x = [x]
        obj["deep"] = x
    return obj


def csv_mutation(rng, d):
    lines = d.split(b"\n")
    k = rng.randrange(4)
    i = rng.randrange(len(lines))
    if k == 0:
        f = lines[i].split(b",")
        j = rng.randrange(len(f))
        f[j] = rng.choice([b"-1", b"0x", b"", b"\"", b"18446744073709551616", b"alloc", b"zz"])
        lines[i] = b",".join(f)
    elif k == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif k == 2:
        del lines[i]
    else:
        return byte_mutation(rng, d)
    return b"\n".join(lines)


def mutate(rng, name, data):
    if data[:1] != b"\x80":
        return csv_mutation(rng, data) if rng.random() < 0.6 else byte_mutation(rng, data)
    k = rng.random()
    if k < 0.35:
        try:
            obj = pickle.loads(data)
            obj = edit_object(rng, obj)
            return pickle.dumps(obj, protocol=rng.randint(2, 5))
        except Exception:
            return byte_mutation(rng, data)
    if k < 0.6:
        return opcode_rewrite(rng, data)
    return byte_mutation(rng, data)


# ---- running and classifying ---------------------------------------------------------

def limit():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def cpython_loads(data):
    """CPython's verdict on the pickle, in a child under the same memory limit."""
    p = subprocess.run([sys.executable, "-c",
                        "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                       input=data, capture_output=True, preexec_fn=limit, timeout=60)
    return p.returncode == 0


def classify(binary, path, data):
    try:
        p = subprocess.run([binary, "replay", "--json", "--capacity", "64GiB", path],
                           capture_output=True, preexec_fn=limit, timeout=60)
    except subprocess.TimeoutExpired:
        return "runaway (over 60 s)"
    err = p.stderr.decode(errors="replace")
    if p.returncode == 101 or "panicked" in err:
        return "panic"
    if "memory allocation of" in err:
        return "allocation-failure abort"
    if "overflowed its stack" in err:
        return "stack overflow"
    if p.returncode < 0:
        return f"signal {-p.returncode}"
    # Exit 2: the replay ran out of simulated memory (documented), which its figures show.
    if p.returncode in (0, 2):
        ooms = 0
        for line in p.stdout.decode().splitlines():
            v = json.loads(line)
            if (v["peak_reserved"] > CAPACITY or v["peak_allocated"] > MAX_BYTES
                    or (v.get("pytorch_peak_reserved") or 0) > MAX_BYTES):
                return f"exit {p.returncode} with impossible figures"
            ooms += v.get("ooms", 0)
        if (p.returncode == 2) != (ooms > 0):
            return f"exit {p.returncode} with {ooms} OOMs in the figures"
        if data[:1] == b"\x80":
            if not cpython_loads(data):
                return "exit 0 on a pickle CPython rejects"
            try:
                ok = snapshot_valid(pickle.loads(data))
            except Exception:
                ok = False
        else:
            ok = csv_valid(data)
        return "exit 0 (valid)" if ok else "exit 0 on structurally invalid input"
    if p.returncode != 1:
        return f"exit {p.returncode}"
    lines = [l for l in err.splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    if len(err) > 400 * max(1, len(lines)) or len(last) > 400:
        return "error longer than 400 bytes"
    if not last.startswith(f"cudalloc: {path}: ") or not (
            re.search(r"(byte|line|event|segment|device|allocator_settings|not a|neither|"
                      r"snapshot|no events)", last)):
        return "error naming neither file nor position"
    return "exit 1, one short error naming the file"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default="target/release/cudalloc")
    ap.add_argument("--keep", default="target/campaign-failures")
    ap.add_argument("seeds", nargs="+")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    seeds = [(os.path.basename(s), open(s, "rb").read()) for s in a.seeds]
    counts = collections.Counter()
    os.makedirs(a.keep, exist_ok=True)
    fine = ("exit 0 (valid)", "exit 1, one short error naming the file")
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.cases):
            name, data = rng.choice(seeds)
            m = mutate(rng, name, data)
            if rng.random() < 0.3:
                m = mutate(rng, name, m)
            path = os.path.join(tmp, f"case{k}")
            with open(path, "wb") as f:
                f.write(m)
            c = classify(a.bin, path, m)
            counts[c] += 1
            if c not in fine:
                with open(os.path.join(a.keep, f"case{k}-{name}"), "wb") as f:
                    f.write(m)
            os.remove(path)
            if (k + 1) % 500 == 0:
                print(f"{k + 1} cases: {dict(counts)}", file=sys.stderr)
    print(f"| outcome | cases |\n| --- | ---: |")
    for c, n in sorted(counts.items(), key=lambda x: -x[1]):
        print(f"| {c} | {n} |")
    print(f"| total | {a.cases} |")


if __name__ == "__main__":
    main()
