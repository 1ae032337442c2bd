import sys, time, torch
sys.path.insert(0, "src")
from torch import nn
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from _scratch_gpu_score import build
dev = "cuda"
model, _, x, y = build()
model = model.to(dev)
oracle = TorchOracle(model, input_shape=(1, 8, 8))
x, y = x.to(dev), y.to(dev)
for name, threat, kw, mq in [
    ("hopskipjump", ThreatModel(norm="l2", eps=8.0), {}, 2000),
    ("hopskipjump", ThreatModel(norm="linf", eps=1.0), {}, 2000),
    ("hopskipjump", ThreatModel(norm="l2", eps=8.0, goal="targeted", target="random"), {}, 2000),
    ("boundary", ThreatModel(norm="l2", eps=8.0), {"steps": 2000}, None),
    ("boundary", ThreatModel(norm="l2", eps=8.0, goal="targeted", target="least_likely"), {"steps": 2000}, None),
]:
    a = ATTACKS.get(name)(**kw)
    r1 = a(oracle, x, y, threat, max_queries=mq, early_stop=False, seed=1)
    r2 = a(oracle, x, y, threat, max_queries=mq, early_stop=False, seed=1)
    print(name, threat.describe(), r1.x_adv.device, "succ", r1.success_rate, "med", float(r1.distance.median()),
          "qmax", int(r1.queries.max()), "det", torch.equal(r1.x_adv, r2.x_adv), f"{r1.elapsed_s:.2f}s", flush=True)
# Larger inputs: 500 MNIST-shaped samples through a random CNN (exercises the chunked estimate).
torch.manual_seed(0)
big = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 12 * 12, 10)).to(dev).eval()
xb = torch.rand(500, 1, 28, 28, device=dev)
yb = big(xb).argmax(1)
ob = TorchOracle(big, input_shape=(1, 28, 28))
for mq in (1000, 5000):
    r = ATTACKS.get("hopskipjump")()(ob, xb, yb, ThreatModel(norm="l2", eps=28.0), max_queries=mq, early_stop=False)
    print("mnist-shaped hsj", mq, "succ", r.success_rate, "med", float(r.distance.median()), "qmax", int(r.queries.max()), f"{r.elapsed_s:.2f}s",
          "peak GiB", torch.cuda.max_memory_allocated() / 2**30, flush=True)
