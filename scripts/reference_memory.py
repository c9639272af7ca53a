#!/usr/bin/env python3
"""Peak memory of the PyTorch reference restoring one face, measured as examples/bench_gpen.rs
measures ours: the peak resident size during the forward passes (weights resident), after
resetting the peak once the weights are built. Uses ../shared/reference/gpen_reference.py as is.

  reference_memory.py SIZE [--dtype fp32|bf16] [--threads 2] [--reps 1]
"""
import argparse, json, math, os, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference"))
import torch  # noqa: E402
import gpen_reference as ref  # noqa: E402


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("size", type=int)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cm, narrow = (1, 0.5) if a.size == 256 else (2, 1.0)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    sd = {k: v.to(dt) for k, v in ref.random_state_dict(a.size, cm, narrow).items()}
    x = (torch.rand(1, 3, a.size, a.size) * 2 - 1).to(dt)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    resident = status_mib("VmRSS:")
    times = []
    with torch.inference_mode():
        ref.gpen_forward(sd, x)
        for _ in range(a.reps):
            t = time.perf_counter()
            ref.gpen_forward(sd, x)
            times.append(time.perf_counter() - t)
    print(json.dumps({"impl": "pytorch-eager-reference", "size": a.size, "dtype": a.dtype, "threads": a.threads,
                      "median_s": round(sorted(times)[len(times) // 2], 4),
                      "peak_rss_mib": round(status_mib("VmHWM:"), 1), "resident_mib": round(resident, 1)}))


if __name__ == "__main__":
    main()
