"""Seconds per training step of the default defocus network in bf16 on CPU, by memory layout.

Bare forward + backward + AdamW on random data (no data pipeline), two threads, batch 8; the median of 15 steps
after 3 warm-up steps. docs/results/defocus.md, "Channels-last training".

    python docs/results/defocus_layout_probe.py eager 96        # contiguous (NCHW)
    python docs/results/defocus_layout_probe.py cl 96           # channels-last (NHWC)
    python docs/results/defocus_layout_probe.py compile 96      # torch.compile, contiguous (needs a C++ compiler)
    python docs/results/defocus_layout_probe.py compile_cl 96   # torch.compile, channels-last
"""

import sys
import time

import torch

from napari_linblur.models.hrnet import HDMENet, preset_config

torch.set_num_threads(2)
torch.manual_seed(0)
mode = sys.argv[1] if len(sys.argv) > 1 else "eager"
S = int(sys.argv[2]) if len(sys.argv) > 2 else 96
net = HDMENet(**{**preset_config("default"), "in_channels": 2}).train()
x = torch.randn(8, 2, S, S)
s = torch.rand(8, 1, S, S) * 10
if "cl" in mode:
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
run = torch.compile(net) if "compile" in mode else net
opt = torch.optim.AdamW(net.parameters(), 1e-3)


def step() -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = run(x)
    torch.nn.functional.l1_loss(p.float(), s).backward()
    opt.step()


t0 = time.perf_counter()
for _ in range(3):
    step()
print(mode, S, "warm-up s", round(time.perf_counter() - t0, 1))
ts = []
for _ in range(15):
    t = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t)
print(mode, S, "median s/step", round(sorted(ts)[len(ts) // 2], 3))
