"""A few training steps of a tiny transformer (written here, random weights) for the GPU kit
(scripts/gpu/run.sh), under one allocator:

  native    PyTorch's own caching allocator
  cudalloc  cudalloc through PyTorch's pluggable-allocator API (ffi/python/cudalloc)
  preload   PyTorch with PYTORCH_NO_CUDA_MEMORY_CACHING=1 under libcudalloc_preload.so (the
            caller sets both in the environment)

It records a memory snapshot from process start (PyTorch's `_record_memory_history`, or
cudalloc's own history under the plug-in; none under the preload, where PyTorch caches
nothing and records nothing: the shim's summary at exit goes to stderr) and prints one `result:` line of JSON: the loss of
every step (each must be finite), peak reserved and allocated bytes as the allocator in use
reports them, and the snapshot's path.

With --no-compute (the stand-in CUDA, which runs no kernels) it only allocates and frees
tensors of the model's shapes for each step: install, statistics and snapshot paths are
exercised, the training is not. It must not judge the figures: run.sh compares them.
"""
import argparse
import json
import math
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("allocator", choices=["native", "cudalloc", "preload"])
p.add_argument("--steps", type=int, default=20)
p.add_argument("--snapshot", help="where to write the snapshot (not with preload)")
p.add_argument("--no-compute", action="store_true")
p.add_argument("--python-module", default=os.path.join(os.path.dirname(__file__), "..", "python"))
args = p.parse_args()

cudalloc = None
if args.allocator == "cudalloc":
    sys.path.insert(0, args.python_module)
    import cudalloc

    cudalloc.install_pytorch()  # before CUDA is first used
    cudalloc.record_history(True, 1_000_000)

import torch  # noqa: E402

if args.allocator == "native":
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)

D, HEADS, LAYERS, SEQ, BATCH, VOCAB = 512, 8, 4, 256, 16, 8192


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(D)
        self.attn = torch.nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(D)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(D, 4 * D), torch.nn.GELU(), torch.nn.Linear(4 * D, D)
        )

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, D)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = torch.nn.Linear(D, VOCAB)

    def forward(self, tokens):
        mask = torch.triu(torch.full((SEQ, SEQ), float("-inf"), device=tokens.device), 1)
        x = self.emb(tokens)
        for b in self.blocks:
            x = b(x, mask)
        return self.head(x)


losses = []
t0 = time.perf_counter()
if args.no_compute:
    # Shapes of the model's parameters and of one step's activations, allocated and freed.
    shapes = [p.shape for p in Tiny().parameters()]
    for _ in range(args.steps):
        params = [torch.empty(s, device="cuda") for s in shapes]
        acts = [torch.empty(BATCH, SEQ, 4 * D, device="cuda") for _ in range(LAYERS * 3)]
        logits = torch.empty(BATCH, SEQ, VOCAB, device="cuda")
        del params, acts, logits
else:
    torch.manual_seed(0)
    model = Tiny().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(args.steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ), device="cuda")
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
elapsed = time.perf_counter() - t0

if cudalloc is not None:
    stats = cudalloc.memory_stats()
    cudalloc.dump_snapshot(args.snapshot)
elif args.allocator == "native":
    stats = torch.cuda.memory_stats()
    torch.cuda.memory._dump_snapshot(args.snapshot)
    torch.cuda.memory._record_memory_history(enabled=None)
else:
    stats = {}
    args.snapshot = None

result = {
    "allocator": args.allocator,
    "steps": args.steps,
    "compute": not args.no_compute,
    "losses": losses,
    "losses_finite": all(math.isfinite(x) for x in losses),
    "reserved_peak": stats.get("reserved_bytes.all.peak", 0),
    "allocated_peak": stats.get("allocated_bytes.all.peak", 0),
    "allocated_now": stats.get("allocated_bytes.all.current", 0),
    "seconds": round(elapsed, 3),
    "snapshot": args.snapshot,
    "snapshot_bytes": os.path.getsize(args.snapshot) if args.snapshot else 0,
}
print("result: " + json.dumps(result))
ok = (args.snapshot is None or result["snapshot_bytes"] > 0) and (args.no_compute or (
    len(losses) == args.steps and result["losses_finite"]))
sys.exit(0 if ok else 1)
