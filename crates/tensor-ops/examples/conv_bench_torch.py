"""PyTorch timings of the layers of conv_bench.rs (convolutions and dense layers), for comparison.

Same shapes, same loss (sum(y * r)), same gradients (the kernel always, the input except
for layers that read the data), median of runs after a warm-up, 2 threads by default:

    /tmp/peers/bin/python crates/tensor-ops/examples/conv_bench_torch.py [FILTER] [THREADS]
"""

import sys
import time

import torch
import torch.nn.functional as F

FILTER = sys.argv[1] if len(sys.argv) > 1 else ""
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(THREADS)
torch.manual_seed(0)

# name, (B, C_in, H, W), C_out, k, kind, stride, padding [t, b, l, r] or (p, output_padding)
# or a dense layer's negative slope, x_grad
LAYERS = [
    ("vae conv 1->32 3x3 same 28", (16, 1, 28, 28), 32, 3, "conv", 1, [1, 1, 1, 1], False),
    ("vae conv 32->64 3x3 s2 28", (16, 32, 28, 28), 64, 3, "conv", 2, [0, 1, 0, 1], True),
    ("vae conv 64->64 3x3 same 14 (x2)", (16, 64, 14, 14), 64, 3, "conv", 1, [1, 1, 1, 1], True),
    ("vae convT 64->32 3x3 s2 14", (16, 64, 14, 14), 32, 3, "convT", 2, (1, 1), True),
    ("vae conv 32->1 3x3 same 28", (16, 32, 28, 28), 1, 3, "conv", 1, [1, 1, 1, 1], True),
    ("vae dense 12544->32 relu", (16, 12544, 1, 1), 32, 1, "dense", 1, 0.0, True),
    ("vae dense 2->12544 relu", (16, 2, 1, 1), 12544, 1, "dense", 1, 0.0, True),
    ("gan dense 32->32768 leaky 0.3", (20, 32, 1, 1), 32768, 1, "dense", 1, 0.3, True),
    ("gan conv 128->256 5x5 same 16", (20, 128, 16, 16), 256, 5, "conv", 1, [2, 2, 2, 2], True),
    ("gan convT 256->256 4x4 s2 16", (20, 256, 16, 16), 256, 4, "convT", 2, (1, 0), True),
    ("gan conv 256->256 5x5 same 32", (20, 256, 32, 32), 256, 5, "conv", 1, [2, 2, 2, 2], True),
    ("gan conv 256->3 7x7 same 32", (20, 256, 32, 32), 3, 7, "conv", 1, [3, 3, 3, 3], True),
    ("gan disc 3->128 3x3 valid 32", (20, 3, 32, 32), 128, 3, "conv", 1, [0, 0, 0, 0], False),
    ("gan disc 128->128 4x4 s2 30", (20, 128, 30, 30), 128, 4, "conv", 2, [0, 0, 0, 0], True),
]


def run(kind, x, w, stride, pad, bias=None):
    if kind == "dense":
        return F.leaky_relu(F.linear(x.flatten(1), w.flatten(1), bias), pad)
    if kind == "convT":
        p, op = pad
        return F.conv_transpose2d(x, w, stride=stride, padding=p, output_padding=op)
    t, b, l, r = pad
    if t == b and l == r:
        return F.conv2d(x, w, stride=stride, padding=(t, l))
    return F.conv2d(F.pad(x, (l, r, t, b)), w, stride=stride)


def timed(f, budget=1.5):
    f()
    runs = []
    start = time.perf_counter()
    while len(runs) < 3 or (time.perf_counter() - start < budget and len(runs) < 50):
        t = time.perf_counter()
        f()
        runs.append((time.perf_counter() - t) * 1e3)
    runs.sort()
    return runs[len(runs) // 2]


def main():
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'layer':<34} {'torch fwd':>10} {'torch f+b':>10} {'loss f+b':>9}")
    for name, (b, cin, h, wd), cout, k, kind, stride, pad, x_grad in LAYERS:
        if FILTER not in name:
            continue
        x = torch.randn(b, cin, h, wd, requires_grad=x_grad)
        wshape = (cin, cout, k, k) if kind == "convT" else (cout, cin, k, k)
        w = (torch.randn(*wshape) * 0.05).requires_grad_(True)
        bias = (torch.randn(cout) * 0.1).requires_grad_(True) if kind == "dense" else None
        with torch.no_grad():
            r = torch.randn_like(run(kind, x, w, stride, pad, bias))

        def fwd():
            # Inference mode, as candle's forward without a backward builds nothing costly.
            with torch.no_grad():
                run(kind, x, w, stride, pad, bias)

        def fwd_bwd():
            x.grad = None
            w.grad = None
            if bias is not None:
                bias.grad = None
            (run(kind, x, w, stride, pad, bias) * r).sum().backward()

        y0 = torch.zeros_like(r, requires_grad=True)

        def loss_only():
            # The loss alone, part of fwd_bwd.
            y0.grad = None
            (y0 * r).sum().backward()

        print(f"{name:<34} {timed(fwd):>10.2f} {timed(fwd_bwd):>10.2f} {timed(loss_only):>9.2f}")


if __name__ == "__main__":
    main()
