"""Golden numbers for the Rust parity tests of the InceptionV3 and VGG19 feature extractors.

The Rust tests build the same networks with deterministic synthetic weights (no checkpoint
download needed), run the same synthetic inputs and compare per-tap activation statistics,
a handful of sampled activation values, and input gradients against ``backbone_goldens.json``
(written next to this script).

Reference networks (torchvision; their state-dict keys match timm's ``inception_v3.tf_in1k`` /
``vgg19.tv_in1k`` checkpoints for the parts we use):
  * ``torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)``,
    forward exactly as torchvision's ``Inception3._forward`` minus the head (avgpool/dropout/fc).
    NOTE: torchvision's Inception uses ``F.avg_pool2d(..., count_include_pad=True)`` (the default)
    for the pool branches and BN eps = 0.001.
  * ``torchvision.models.vgg19(weights=None).features`` (keys prefixed ``features.``), ReLUs
    switched to ``inplace=False`` (numerically identical).

Weight formula (every float tensor of the state dict, parameters and buffers; ``fc.*``,
``AuxLogits.*`` and ``num_batches_tracked`` are skipped). Computed in float64, cast to float32
at the end. For key ``k`` with n elements and flat row-major index i = 0..n-1:
    s    = sum(k.encode("utf-8")) % 97
    u[i] = sin(0.37 * i + 0.1 * s)
    k ends with ".weight", 4-D (out, in, kh, kw):  u[i] * sqrt(4.0 / (in * kh * kw))
    k ends with "bn.weight":                       1 + 0.1 * u[i]
    k ends with "bn.bias":                         0.1 * u[i]
    k ends with "bn.running_mean":                 0.1 * u[i]
    k ends with "bn.running_var":                  1 + 0.25 * (u[i] + 1)
    any other 1-D ".bias" (VGG conv biases):       0.01 * u[i]
(The argument 0.37*i + 0.1*s is evaluated as two f64 products and one f64 add, no FMA.)

Inputs: pixel image p[c, y, x] = 127.5 + 127.5 * sin(0.11*y + 0.07*x + 1.3*c), c = R,G,B,
batch 1, NCHW. Pixels and pre-processing are computed in float64, the result cast to float32.
  * InceptionV3, H=99, W=123:  x = p / 127.5 - 1                         (timm tf_in1k / Keras)
  * VGG19,       H=37, W=50:   x = (p / 255 - mean[c]) / std[c],
                               mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)

Per tap (float32 activations, stats in float64): shape, mean, std (population, ddof=0),
abs_max, and samples = [[flat_index, value], ...] at flat indices 0, floor(j*n/7) for
j = 1..6, and n-1.

Gradient goldens (float32 autograd w.r.t. the pre-processed input x; mean(a^2) = sum(a^2)/numel):
  * Inception "dream_grad": loss = 0.2*mean(mixed2^2) + 3*mean(mixed3^2)
                                   + 2*mean(mixed4^2) + 1.5*mean(mixed5^2)
  * VGG "grad":             loss = mean(block4_conv1^2) + mean(block5_conv2^2)
  Recorded: loss, and for the gradient shape, mean, std, abs_mean, abs_max, samples.

Rerun from the repository root (any Python with torch + torchvision works):
    /tmp/peers/bin/python crates/models/tests/goldens/backbone_goldens.py
Generated with torch 2.15.0+cu132 / torchvision 0.29.2+cu132 on CPU, 2 threads (versions are
also written into the JSON).
"""

import json
import math
import os
import platform
import time

import numpy as np
import torch
import torchvision

FORMULA = (
    "s=sum(utf8 bytes of key)%97; u[i]=sin(0.37*i+0.1*s) (f64, flat row-major i); "
    "4-D *.weight: u*sqrt(4/(in*kh*kw)); bn.weight: 1+0.1u; bn.bias: 0.1u; "
    "bn.running_mean: 0.1u; bn.running_var: 1+0.25(u+1); other 1-D .bias: 0.01u; cast to f32"
)

INCEPTION_HW = (99, 123)
VGG_HW = (37, 50)
VGG_MEAN = (0.485, 0.456, 0.406)
VGG_STD = (0.229, 0.224, 0.225)

# (tap name, torchvision module name), in forward order.
INCEPTION_TAPS = [
    ("Conv2d_1a_3x3", "Conv2d_1a_3x3"),
    ("Conv2d_2a_3x3", "Conv2d_2a_3x3"),
    ("Conv2d_2b_3x3", "Conv2d_2b_3x3"),
    ("maxpool1", "maxpool1"),
    ("Conv2d_3b_1x1", "Conv2d_3b_1x1"),
    ("Conv2d_4a_3x3", "Conv2d_4a_3x3"),
    ("maxpool2", "maxpool2"),
    ("mixed0", "Mixed_5b"),
    ("mixed1", "Mixed_5c"),
    ("mixed2", "Mixed_5d"),
    ("mixed3", "Mixed_6a"),
    ("mixed4", "Mixed_6b"),
    ("mixed5", "Mixed_6c"),
    ("mixed6", "Mixed_6d"),
    ("mixed7", "Mixed_6e"),
    ("mixed8", "Mixed_7a"),
    ("mixed9", "Mixed_7b"),
    ("mixed10", "Mixed_7c"),
]

# (tap name, index into vgg19.features); taps are after the ReLU.
VGG_TAPS = [
    ("block1_conv1", 1),
    ("block1_conv2", 3),
    ("block2_conv1", 6),
    ("block2_conv2", 8),
    ("block3_conv1", 11),
    ("block3_conv4", 17),
    ("block4_conv1", 20),
    ("block4_conv4", 26),
    ("block5_conv1", 29),
    ("block5_conv2", 31),
    ("block5_conv4", 35),
    ("block5_pool", 36),
]

DREAM_WEIGHTS = [("mixed2", 0.2), ("mixed3", 3.0), ("mixed4", 2.0), ("mixed5", 1.5)]
VGG_LOSS_TAPS = ["block4_conv1", "block5_conv2"]


def synthetic_tensor(key, shape):
    """The weight formula from the module docstring, as a float32 numpy array."""
    n = int(np.prod(shape)) if len(shape) else 1
    s = sum(key.encode("utf-8")) % 97
    u = np.sin(0.37 * np.arange(n, dtype=np.float64) + 0.1 * s)
    if key.endswith(".weight") and len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        v = u * math.sqrt(4.0 / fan_in)
    elif key.endswith("bn.weight"):
        v = 1.0 + 0.1 * u
    elif key.endswith("bn.bias"):
        v = 0.1 * u
    elif key.endswith("bn.running_mean"):
        v = 0.1 * u
    elif key.endswith("bn.running_var"):
        v = 1.0 + 0.25 * (u + 1.0)
    elif key.endswith(".bias") and len(shape) == 1:
        v = 0.01 * u
    else:
        raise ValueError(f"no formula for {key} with shape {tuple(shape)}")
    return v.astype(np.float32).reshape(shape)


def fill_synthetic(module, prefix=""):
    """Overwrite every float tensor in module's state dict; key used by the formula is prefix+key."""
    sd = module.state_dict()
    new_sd = {}
    for key, t in sd.items():
        full = prefix + key
        skip = (
            key.endswith("num_batches_tracked")
            or full.startswith("fc.")
            or full.startswith("AuxLogits.")
        )
        if skip or not t.is_floating_point():
            new_sd[key] = t
            continue
        new_sd[key] = torch.from_numpy(synthetic_tensor(full, tuple(t.shape)))
    module.load_state_dict(new_sd, strict=True)


def pixels(h, w):
    c = np.arange(3, dtype=np.float64)[:, None, None]
    y = np.arange(h, dtype=np.float64)[None, :, None]
    x = np.arange(w, dtype=np.float64)[None, None, :]
    return 127.5 + 127.5 * np.sin(0.11 * y + 0.07 * x + 1.3 * c)  # (3, h, w), float64


def inception_input():
    p = pixels(*INCEPTION_HW)
    x = p / 127.5 - 1.0
    return torch.from_numpy(x.astype(np.float32)[None])


def vgg_input():
    p = pixels(*VGG_HW)
    mean = np.array(VGG_MEAN, dtype=np.float64)[:, None, None]
    std = np.array(VGG_STD, dtype=np.float64)[:, None, None]
    x = (p / 255.0 - mean) / std
    return torch.from_numpy(x.astype(np.float32)[None])


def sample_indices(n):
    return sorted({0, n - 1, *(j * n // 7 for j in range(1, 7))})


def samples(flat32):
    return [[i, float(flat32[i])] for i in sample_indices(flat32.size)]


def tap_stats(t):
    a32 = t.detach().cpu().numpy().astype(np.float32).ravel()
    a = a32.astype(np.float64)
    return {
        "shape": list(t.shape),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "abs_max": float(np.abs(a).max()),
        "samples": samples(a32),
    }


def grad_stats(loss, g):
    g32 = g.detach().cpu().numpy().astype(np.float32).ravel()
    a = g32.astype(np.float64)
    return {
        "loss": float(loss),
        "shape": list(g.shape),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "abs_mean": float(np.abs(a).mean()),
        "abs_max": float(np.abs(a).max()),
        "samples": samples(g32),
    }


def mean_sq(a):
    return (a * a).sum() / a.numel()


def inception_forward(net, x, stop_after=None):
    """torchvision Inception3._forward minus the head, returning {tap name: tensor}."""
    out = {}
    for tap, mod in INCEPTION_TAPS:
        x = getattr(net, mod)(x)
        out[tap] = x
        if tap == stop_after:
            break
    return out


def vgg_forward(features, x, stop_after=None):
    by_index = {idx: tap for tap, idx in VGG_TAPS}
    out = {}
    for i, layer in enumerate(features):
        x = layer(x)
        if i in by_index:
            out[by_index[i]] = x
            if by_index[i] == stop_after:
                break
    return out


def build_inception():
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    fill_synthetic(net)
    return net.float().eval()


def build_vgg():
    features = torchvision.models.vgg19(weights=None).features
    for m in features:
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    fill_synthetic(features, prefix="features.")
    return features.float().eval()


def main():
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)  # nothing random is used; only for the default init we overwrite

    result = {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "formula": FORMULA,
    }

    # ---- InceptionV3 ----
    net = build_inception()
    x = inception_input()
    with torch.no_grad():
        acts = inception_forward(net, x)
    inc = {
        "input_hw": list(INCEPTION_HW),
        "input": tap_stats(x),
        "taps": {tap: {"module": mod, **tap_stats(acts[tap])} for tap, mod in INCEPTION_TAPS},
    }
    xg = x.clone().requires_grad_(True)
    acts = inception_forward(net, xg, stop_after="mixed5")
    loss = sum(w * mean_sq(acts[name]) for name, w in DREAM_WEIGHTS)
    (g,) = torch.autograd.grad(loss, xg)
    inc["dream_grad"] = {"weights": dict(DREAM_WEIGHTS), **grad_stats(loss.item(), g)}
    result["inception_v3"] = inc
    del net, acts

    # ---- VGG19 ----
    feats = build_vgg()
    x = vgg_input()
    with torch.no_grad():
        acts = vgg_forward(feats, x)
    vgg = {
        "input_hw": list(VGG_HW),
        "input": tap_stats(x),
        "taps": {tap: {"index": idx, **tap_stats(acts[tap])} for tap, idx in VGG_TAPS},
    }
    xg = x.clone().requires_grad_(True)
    acts = vgg_forward(feats, xg, stop_after=VGG_LOSS_TAPS[-1])
    loss = sum(mean_sq(acts[name]) for name in VGG_LOSS_TAPS)
    (g,) = torch.autograd.grad(loss, xg)
    vgg["grad"] = {"loss_taps": VGG_LOSS_TAPS, **grad_stats(loss.item(), g)}
    result["vgg19"] = vgg

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backbone_goldens.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    # ---- summary / sanity check ----
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    bad = []
    for model in ("inception_v3", "vgg19"):
        for tap, st in result[model]["taps"].items():
            print(f"{model:12s} {tap:14s} {str(st['shape']):20s} mean={st['mean']:.6g} std={st['std']:.6g}")
            if not (1e-6 <= st["std"] <= 1e6):
                bad.append(f"{model}/{tap} std={st['std']:.3g}")
    for model, key in (("inception_v3", "dream_grad"), ("vgg19", "grad")):
        st = result[model][key]
        print(
            f"{model:12s} {key:14s} loss={st['loss']:.6g} mean={st['mean']:.6g} "
            f"std={st['std']:.6g} abs_mean={st['abs_mean']:.6g}"
        )
    if bad:
        print("WARNING: degenerate activation scale:", ", ".join(bad))
    print(f"wrote {path} ({os.path.getsize(path)} bytes) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
