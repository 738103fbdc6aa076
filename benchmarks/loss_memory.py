"""Peak CPU memory of the chunked distillation loss against a naive full-tensor one, forward + backward.

Each variant runs in a fresh subprocess. Its peak is ru_maxrss (the process's high-water mark) minus the
resident memory just after the inputs were created, so both variants pay for the same inputs and only the
loss's own memory is compared. The last line printed is one JSON object.

    python benchmarks/loss_memory.py [--B 2] [--L 1024] [--V 151936] [--loss jsd] [--chunk-size 256]
                                     [--variants naive,chunked]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from specdistill import losses


def rss_mb() -> float:
    """Resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KB on Linux


def naive_jsd(s, t, mask, beta=0.5):
    """The textbook full-tensor JSD (as in TRL): every [B, L, V] intermediate lives in fp32 at once."""
    ls, lt = s.float().log_softmax(-1), t.float().log_softmax(-1)
    lm = torch.logsumexp(torch.stack([ls + torch.log1p(torch.tensor(-beta)), lt + torch.log(torch.tensor(beta))]), 0)
    kl_t = F.kl_div(lm, lt, reduction="none", log_target=True)
    kl_s = F.kl_div(lm, ls, reduction="none", log_target=True)
    return (beta * kl_t + (1 - beta) * kl_s)[mask].sum()


def child(args) -> None:
    torch.manual_seed(0)
    s = torch.randn(args.B, args.L, args.V, dtype=torch.bfloat16).requires_grad_()  # [B, L, V]
    t = torch.randn(args.B, args.L, args.V, dtype=torch.bfloat16)
    mask = torch.ones(args.B, args.L, dtype=torch.bool)
    base = rss_mb()
    start = time.perf_counter()
    if args.variant == "naive":
        loss = naive_jsd(s, t, mask)
    else:
        loss = losses.compute(args.loss, s, t, mask, chunk_size=args.chunk_size)[0]
    loss.backward()
    print(json.dumps({"peak_mb": peak_mb() - base, "loss": loss.item(), "seconds": time.perf_counter() - start,
                      "grad_sum": s.grad.float().sum().item()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=2, help="batch size")
    p.add_argument("--L", type=int, default=1024, help="positions per row, all valid")
    p.add_argument("--V", type=int, default=151936, help="vocabulary size (151936 = Qwen2/Qwen3)")
    p.add_argument("--loss", default="jsd", help="the chunked loss (the naive reference is JSD, beta 0.5)")
    p.add_argument("--chunk-size", type=int, default=None, help="positions per chunk (default: the library's)")
    p.add_argument("--variants", default="naive,chunked",
                   help="which to run, comma-separated (chunked alone skips the naive one's [B, L, V] fp32 peak)")
    p.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # set in the children
    args = p.parse_args()
    args.chunk_size = args.chunk_size or losses.DEFAULT_CHUNK_SIZE
    if args.variant:
        return child(args)
    out = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(variant, out[variant], flush=True)
    result = {"B": args.B, "L": args.L, "V": args.V, "dtype": "bfloat16", "loss": args.loss,
              "chunk_size": args.chunk_size}
    for variant, r in out.items():
        result.update({f"{variant}_peak_mb": round(r["peak_mb"]), f"{variant}_s": round(r["seconds"], 1)})
    if len(out) == 2:
        n, c = out["naive"], out["chunked"]
        result["ratio"] = round(c["peak_mb"] / n["peak_mb"], 3)
        result["loss_rel_diff"] = abs(n["loss"] - c["loss"]) / abs(n["loss"]) if args.loss == "jsd" else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
