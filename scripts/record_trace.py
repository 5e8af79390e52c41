#!/usr/bin/env python3
"""Record an allocation trace of a few training steps of a real model, for `cudalloc replay`.

The models are built from configs with random weights (no download):
  gpt2      transformers GPT2LMHeadModel (small config)
  bert      transformers BertForMaskedLM (small config)
  resnet18  torchvision resnet18

--device cpu  (default): the exact sequence of tensor storage allocations and frees, taken
              from torch.profiler(profile_memory=True), written as the project's CSV
              (seq,time_ns,action,ptr,size,stream,op).
--device cuda: torch.cuda.memory._record_memory_history from before the model is built,
              then _dump_snapshot: a PyTorch snapshot pickle with PyTorch's own segments.

Examples:
  python3 scripts/record_trace.py --model gpt2 --steps 2 --out traces/cpu_gpt2_train.csv
  python3 scripts/record_trace.py --model resnet18 --device cuda --out traces/gpu_resnet18.pickle
"""
import argparse
import json
import os
import sys
import tempfile


def build(model, device, batch, seq):
    import torch

    if model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8192, n_positions=seq)
        m = GPT2LMHeadModel(cfg)
        x = torch.randint(0, cfg.vocab_size, (batch, seq))

        def loss_fn(m, x):
            return m(input_ids=x.to(device), labels=x.to(device)).loss

    elif model == "bert":
        from transformers import BertConfig, BertForMaskedLM

        cfg = BertConfig(
            num_hidden_layers=4,
            hidden_size=256,
            num_attention_heads=4,
            intermediate_size=1024,
            vocab_size=8192,
            max_position_embeddings=seq,
        )
        m = BertForMaskedLM(cfg)
        x = torch.randint(0, cfg.vocab_size, (batch, seq))

        def loss_fn(m, x):
            return m(input_ids=x.to(device), labels=x.to(device)).loss

    elif model == "resnet18":
        import torchvision

        m = torchvision.models.resnet18(weights=None, num_classes=100)
        x = (torch.randn(batch, 3, 64, 64), torch.randint(0, 100, (batch,)))

        def loss_fn(m, x):
            return torch.nn.functional.cross_entropy(m(x[0].to(device)), x[1].to(device))

    else:
        raise SystemExit(f"unknown model {model}")
    return m.to(device), x, loss_fn


def train(m, x, loss_fn, steps):
    import torch

    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m, x)
        loss.backward()
        opt.step()
    return float(loss)


def record_cpu(args):
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m, x, loss_fn = build(args.model, "cpu", args.batch, args.seq)
        loss = train(m, x, loss_fn, args.steps)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = [e for e in events if e.get("name") == "[memory]"]
    mem.sort(key=lambda e: e.get("ts", 0))
    live = {}
    rows = []
    for e in mem:
        a = e.get("args", {})
        if a.get("Device Type", 0) != 0:  # CPU only
            continue
        addr = int(a["Addr"])
        nbytes = int(a["Bytes"])
        ts_ns = int(float(e.get("ts", 0)) * 1000)
        if nbytes > 0:
            if addr in live:  # allocator reuse seen before its free: close the old one
                rows.append((ts_ns, "free", addr, live.pop(addr)))
            live[addr] = nbytes
            rows.append((ts_ns, "alloc", addr, nbytes))
        elif nbytes < 0:
            if addr in live:
                rows.append((ts_ns, "free", addr, live.pop(addr)))
            # a free of memory allocated before profiling started: not part of the trace
    with open(args.out, "w") as f:
        f.write("seq,time_ns,action,ptr,size,stream,op\n")
        for i, (ts, action, addr, size) in enumerate(rows):
            f.write(f"{i},{ts},{action},{hex(addr)},{size},0,\n")
    print(f"{args.out}: {len(rows)} events, final loss {loss:.3f}", file=sys.stderr)


def record_cuda(args):
    import torch

    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    torch.manual_seed(0)
    m, x, loss_fn = build(args.model, "cuda", args.batch, args.seq)
    loss = train(m, x, loss_fn, args.steps)
    torch.cuda.synchronize()
    torch.cuda.memory._dump_snapshot(args.out)
    torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_reserved()
    print(f"{args.out}: loss {loss:.3f}, PyTorch peak reserved {peak} bytes", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gpt2", "bert", "resnet18"], required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.device == "cpu":
        record_cpu(args)
    else:
        record_cuda(args)


if __name__ == "__main__":
    main()
