"""Study: ZeroQ-style synthetic inputs (match the original BN statistics), then BN recalibration of merged nets."""
import sys, json, time, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from torch import nn
from ifm.experiments.run import RunOptions, RunSpec
from ifm.experiments.loading import load_model
from ifm.experiments.evaluate import Evaluator
from ifm.experiments.selfmerge import merge_weights
from ifm.discovery import channel_groups
from ifm.architectures import model_for_state_dict
from ifm.batchnorm import recalibrate_bn
import ifm.correction as C
torch.set_num_threads(2)
N, B, ITERS, LR = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
spec = RunSpec(arch="VGG11", model_param=str(ROOT.parent / "shared/checkpoints/vgg11_cifar10_s0.pt"),
               data_root=str(ROOT.parent / "shared/data/cifar10"), eval_samples=N, beta=0.999)
loaded = load_model(spec)
ev = Evaluator(loaded, spec, RunOptions(progress=False, workers=0), torch.device("cpu"))
orig = model_for_state_dict(loaded.arch, loaded.state_dict).eval()
for p in orig.parameters(): p.requires_grad_(False)
bns = [m for m in orig.modules() if isinstance(m, nn.BatchNorm2d)]
stats = []
def hook(mod, inp):
    x = inp[0]; stats.append((mod, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))
hs = [b.register_forward_pre_hook(hook) for b in bns]
g = torch.Generator().manual_seed(0)
x = torch.randn(B, 3, 32, 32, generator=g).requires_grad_(True)
opt = torch.optim.Adam([x], lr=LR)
t = time.perf_counter()
for it in range(ITERS):
    stats.clear(); opt.zero_grad()
    orig(x)
    loss = sum((m - b.running_mean).norm() + (v.add(b.eps).sqrt() - b.running_var.add(b.eps).sqrt()).norm() for b, m, v in stats)
    loss.backward(); opt.step()
    if it % 50 == 0 or it == ITERS - 1: print(it, round(loss.item(), 3), round(time.perf_counter() - t, 1), flush=True)
for h in hs: h.remove()
synth = x.detach()

batches = [(synth, None)]
for r, rule, est in [(0.25, "official", "weights"), (0.5, "official", "weights"), (0.5, "official", "none"), (0.75, "mean", "rows"), (0.75, "official", "weights")]:
    res = merge_weights(loaded, 0.999, max_ratio=r, rule=rule)
    groups = channel_groups(loaded.arch, loaded.state_dict, None, rule=rule, graph=loaded.graph)
    sd = C.correct_merged(loaded.state_dict, res.state_dict, groups, res.clusters, rule, loaded.graph.batch_norms, est)
    model = model_for_state_dict(loaded.arch, sd)
    a0 = ev(model, "x").accuracy
    recalibrate_bn(model, batches)
    a1 = ev(model, "x").accuracy
    print(json.dumps({"r": r, "rule": rule, "est": est, "datafree": round(a0, 2), "synth_recal": round(a1, 2)}), flush=True)
