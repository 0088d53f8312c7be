"""PyTorch reference for h2e's speed benchmark (issue "Benchmarks").

The same small CNN as h2e's `small-cnn` backbone (src/model.rs):
3 x [conv3x3 (no bias) - BatchNorm - ReLU - maxpool 2], 32/64/128 channels,
global average pooling, linear to 10 classes. Measures images/s of a
training step (batch 128, 1x28x28, forward + cross-entropy + backward +
SGD momentum 0.9 / weight decay 5e-4) and of inference (batch 512, eval
mode, no grad), median of several runs after warm-up, in NCHW and
channels-last memory formats. Prints one JSON object.

    python3 benches/pytorch_speed.py [WARMUP STEPS RUNS] [--device cpu|cuda]

On `cuda` every timed run ends with a device synchronisation, cuDNN picks
its fastest algorithms (`cudnn.benchmark`), and the peak is the CUDA
allocator's high-water mark as well as the process's RSS.

Run by benches/speed.sh, which installs torch in a throwaway virtualenv.
"""
import json
import resource
import statistics
import sys
import time

import torch
from torch import nn


def small_cnn(channels=1, classes=10):
    layers = []
    widths = [channels, 32, 64, 128]
    for i in range(3):
        layers += [
            nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[i + 1]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes)]
    return nn.Sequential(*layers)


def bench(fn, batch, warmup, steps, runs, sync):
    for _ in range(warmup):
        fn()
    sync()
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        rates.append(batch * steps / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main():
    args = sys.argv[1:]
    device = "cpu"
    if "--device" in args:
        i = args.index("--device")
        device = args[i + 1]
        del args[i : i + 2]
    warmup, steps, runs = (int(a) for a in (args[:3] if len(args) >= 3 else (30, 20, 5)))
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None
    out = {"torch": torch.__version__, "device": device, "threads": torch.get_num_threads(), "results": {}}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    for fmt_name, fmt in [("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)]:
        model = small_cnn().to(device).to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(128, 1, 28, 28, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (128,), device=device)
        loss_fn = nn.CrossEntropyLoss()

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

        model.train()
        train, train_runs = bench(train_step, 128, warmup, steps, runs, sync)
        model.eval()
        xi = torch.randn(512, 1, 28, 28, device=device).contiguous(memory_format=fmt)

        def infer():
            with torch.no_grad():
                model(xi)

        inf, inf_runs = bench(infer, 512, warmup // 3 + 1, steps, runs, sync)
        out["results"][fmt_name] = {
            "train_img_s": train,
            "train_runs": train_runs,
            "infer_img_s": inf,
            "infer_runs": inf_runs,
        }
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
