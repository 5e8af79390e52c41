#!/usr/bin/env python3
"""Write the regression inputs of tests/bad_traces.rs into tests/fixtures/bad-traces/.

Each is a minimal case of a crash or a wrong figure that the mutation campaign against
`cudalloc replay` found (see tests/bad_traces.rs for what each must give). Plain CPython,
no torch: `python3 scripts/make_bad_traces.py`.
"""
import os
import pickle

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "bad-traces")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def ev(action, addr, size, stream=0):
    return {"action": action, "addr": addr, "size": size, "stream": stream, "frames": []}


def seg(addr, total, blocks, device=0):
    return {"device": device, "address": addr, "total_size": total, "stream": 0,
            "segment_type": "large", "blocks": blocks}


def snap(events, segments=(), settings=None):
    d = {"segments": list(segments), "device_traces": [events]}
    if settings is not None:
        d["allocator_settings"] = settings
    return d


def main():
    os.makedirs(OUT, exist_ok=True)
    # Text opcodes cut off before their newline.
    write("int-at-eof.pickle", b"\x80\x02I1")
    write("long-at-eof.pickle", b"\x80\x02L1")
    write("float-at-eof.pickle", b"\x80\x02F1.5")
    # A PUT index that wraps, and one the memo would be resized to.
    write("put-wraps.pickle", b"\x80\x02]p18446744073709551615\n.")
    write("put-huge.pickle", b"\x80\x02]r\xff\xff\xff\xff.")
    # A list nested 10^6 deep: 2 MB that a recursive drop overflows on.
    n = 10**6
    write("nested-deep.pickle", b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    # Memo references: one event list named 20,000 times (device_traces), one segment
    # with 500 blocks named 20,000 times (segments).
    events = [ev("alloc", 0x1000 * (i + 1), 512) for i in range(500)]
    write("memo-device-traces.pickle",
          pickle.dumps({"segments": [], "device_traces": [events] * 20000}, protocol=2))
    s = seg(0x100000, 1 << 21, [{"address": 0x100000 + 512 * i, "size": 512,
                                  "requested_size": 512, "state": "active_allocated"}
                                 for i in range(500)])
    write("memo-segments.pickle",
          pickle.dumps({"segments": [s] * 20000, "device_traces": [[]]}, protocol=2))
    # An address live at the start twice (freed without alloc, then active at the end).
    write("live-twice.pickle", pickle.dumps(snap(
        [ev("free_completed", 0x2000, 1 << 20)],
        [seg(0x2000, 2 << 20, [{"address": 0x2000, "size": 2 << 20, "requested_size": 2 << 20,
                                "state": "active_allocated"}])]), protocol=2))
    # Negative and ill-typed sizes.
    write("segment-negative.pickle", pickle.dumps(snap(
        [ev("alloc", 0x3000, 512)], [seg(0x3000, -2097152, [])]), protocol=2))
    write("alloc-size-negative.pickle", pickle.dumps(snap([ev("alloc", 0x3000, -1)]), protocol=2))
    write("alloc-size-string.pickle", pickle.dumps(snap([ev("alloc", 0x3000, "512")]), protocol=2))
    # A setting --conf refuses.
    write("max-split-1.pickle", pickle.dumps(snap(
        [ev("alloc", 0x3000, 512)], settings={"max_split_size": 1}), protocol=2))
    # An unbalanced quote: the rest of the file becomes one field.
    write("unbalanced-quote.csv",
          b"action,ptr,size,stream\nalloc,\"0x10,100,0\n" + b"alloc,0x20,100,0\n" * 20000)
    # A quote in the trailing, ignored column: the rest of the file went into it, and the
    # replay ended there with exit 0.
    write("quote-in-op-column.csv",
          b"seq,action,ptr,size,stream,op\n1,alloc,0x10,100,0,\n2,alloc,0x20,100,0,\"\n"
          + b"3,free,0x10,,0,\n" * 100)
    # No newline for 3 MB (the 2 GB NUL-filled file, shrunk).
    write("nul-filled.csv", b"\0" * (3 << 20))


if __name__ == "__main__":
    main()
