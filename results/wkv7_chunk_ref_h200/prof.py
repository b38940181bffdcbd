# per-kernel CUDA time of 10 forward+backward calls, B8 T4096 H28 N128 bf16
import functools, torch
import wkv_kernel as W
from torch.profiler import profile, ProfilerActivity
for op in ("wkv6", "wkv7"):
    xs, _ = W.example_inputs(op, 8, 4096, 28, 128, dtype=torch.bfloat16, device="cuda")
    xs = [x.requires_grad_() for x in xs]
    fn = functools.partial(W.wkv7, logw_min=W.RWKV7_LOGW_MIN) if op == "wkv7" else W.wkv6
    go = torch.randn_like(xs[0])
    for _ in range(3):
        torch.autograd.grad(fn(*xs)[0], xs, go)  # (grad, not backward: no summing into .grad in the profile)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(10):
            torch.autograd.grad(fn(*xs)[0], xs, go)
        torch.cuda.synchronize()
    print(op, "10 forward+backward")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
