# where step 1's optimizer time goes at the 7B shape: wall and device time of one AdamW step over the student's time
# mixers (FSDP2 DTensors on one GPU), fused / foreach, and on plain local tensors; clip_grad_norm_
import sys, time
sys.path.insert(0, ".")
import torch
import distill, model as M
from torch.distributed.fsdp import MixedPrecisionPolicy

rank, world, device = distill.setup_distributed()
cfg = distill.Config(stage=1, compile=False)
mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
scfg = M.student_config(M.ModelConfig.from_name("qwen2.5-7b"), "rwkv7", ())
student = distill.sharded(scfg, torch.float32, device, mp, None, "random", True, lambda m: distill.prepare_student(cfg, m))
params = [p for p in student.parameters() if p.requires_grad]
print(len(params), "tensors", sum(p.numel() for p in params) / 1e6, "M params", flush=True)
for p in params:
    p.grad = torch.randn_like(p) * 1e-3
local = [torch.nn.Parameter(p.to_local()) for p in params]
for p, q in zip(local, params):
    p.grad = q.grad.to_local()

def timed(label, fn, n=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize(); wall = (time.perf_counter() - t) / n * 1e3
    with torch.profiler.profile() as prof:
        fn(); torch.cuda.synchronize()
    dev = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    print(f"{label:40s} wall {wall:7.2f} ms  device {dev:7.2f} ms", flush=True)

kw = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, lr=1e-4)
opt, _ = distill.make_optimizer(cfg, student, device)
timed("distill.make_optimizer (DTensor, fused)", opt.step)
timed("DTensor foreach", torch.optim.AdamW(params, foreach=True, **kw).step)
timed("local tensors fused", torch.optim.AdamW(local, fused=True, **kw).step)
timed("local tensors foreach", torch.optim.AdamW(local, foreach=True, **kw).step)
timed("clip_grad_norm_ DTensor", lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))
timed("clip_grad_norm_ local", lambda: torch.nn.utils.clip_grad_norm_(local, 1.0))
timed("zero_grad + fill_grads", lambda: (opt.zero_grad(set_to_none=True), distill.fill_grads(opt)))
torch.distributed.destroy_process_group()
