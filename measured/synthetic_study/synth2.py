import sys, json, time, torch, argparse
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from torch import nn
import torch.nn.functional as F
from ifm.experiments.run import RunOptions, RunSpec
from ifm.experiments.loading import load_model
from ifm.experiments.evaluate import Evaluator
from ifm.experiments.selfmerge import merge_weights
from ifm.discovery import channel_groups
from ifm.architectures import model_for_state_dict
from ifm.batchnorm import recalibrate_bn
import ifm.correction as C
torch.set_num_threads(2)
ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2000); ap.add_argument("--b", type=int, default=64)
ap.add_argument("--iters", type=int, default=500); ap.add_argument("--lr", type=float, default=0.1)
ap.add_argument("--cos", action="store_true"); ap.add_argument("--jitter", type=int, default=0)
ap.add_argument("--ce", type=float, default=0.0); ap.add_argument("--tv", type=float, default=0.0)
ap.add_argument("--batches", type=int, default=1); ap.add_argument("--real", type=int, default=0)
ap.add_argument("--cases", default="0.5:official:weights,0.75:mean:rows")
ap.add_argument("--load", default="")
a = ap.parse_args()
spec = RunSpec(arch="VGG11", model_param=str(ROOT.parent / "shared/checkpoints/vgg11_cifar10_s0.pt"),
               data_root=str(ROOT.parent / "shared/data/cifar10"), eval_samples=a.n, beta=0.999)
loaded = load_model(spec)
ev = Evaluator(loaded, spec, RunOptions(progress=False, workers=0), torch.device("cpu"))
orig = model_for_state_dict(loaded.arch, loaded.state_dict).eval()
for p in orig.parameters(): p.requires_grad_(False)
bns = [m for m in orig.modules() if isinstance(m, nn.BatchNorm2d)]
stats = []
def hook(mod, inp):
    x = inp[0]; stats.append((mod, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))
def synthesize(seed):
    hs = [b.register_forward_pre_hook(hook) for b in bns]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(a.b, 3, 32, 32, generator=g).requires_grad_(True)
    y = torch.arange(a.b) % 10
    opt = torch.optim.Adam([x], lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.iters) if a.cos else None
    t = time.perf_counter()
    for it in range(a.iters):
        stats.clear(); opt.zero_grad()
        xi = x
        if a.jitter:
            dx, dy = torch.randint(-a.jitter, a.jitter + 1, (2,), generator=g).tolist()
            xi = torch.roll(xi, (dx, dy), (2, 3))
            if torch.rand(1, generator=g).item() < 0.5: xi = xi.flip(3)
        out = orig(xi)
        loss = sum((m - b.running_mean).norm() + (v.add(b.eps).sqrt() - b.running_var.add(b.eps).sqrt()).norm() for b, m, v in stats)
        total = loss
        if a.ce: total = total + a.ce * F.cross_entropy(out, y)
        if a.tv: total = total + a.tv * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())
        total.backward(); opt.step()
        if sched: sched.step()
        if it % 100 == 0 or it == a.iters - 1: print(it, round(loss.item(), 3), round(time.perf_counter() - t, 1), flush=True)
    for h in hs: h.remove()
    return x.detach()
if a.real:
    batches = [(x, None) for x, _ in ev.train_batches(a.real)]
elif a.load:
    batches = [(torch.load(a.load), None)]
else:
    batches = [(synthesize(s), None) for s in range(a.batches)]
for case in a.cases.split(","):
    r, rule, est = case.split(":"); r = float(r)
    res = merge_weights(loaded, 0.999, max_ratio=r, rule=rule)
    groups = channel_groups(loaded.arch, loaded.state_dict, None, rule=rule, graph=loaded.graph)
    sd = C.correct_merged(loaded.state_dict, res.state_dict, groups, res.clusters, rule, loaded.graph.batch_norms, est)
    model = model_for_state_dict(loaded.arch, sd)
    a0 = ev(model, "x").accuracy
    recalibrate_bn(model, batches)
    a1 = ev(model, "x").accuracy
    print(json.dumps({"args": vars(a), "r": r, "rule": rule, "est": est, "datafree": round(a0, 2), "recal": round(a1, 2)}), flush=True)
