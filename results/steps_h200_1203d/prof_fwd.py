# where the forward's time goes at B8 T4096 H28 N128 bf16: do_bench with and without grad, the host time of one call,
# and the profiler's kernel list for 10 forwards (with grad: the training forward)
import sys, time, functools, torch
sys.path.insert(0, ".")
import wkv_kernel as W
from triton.testing import do_bench
from torch.profiler import profile, ProfilerActivity
B, T, H, N = 8, 4096, 28, 128
for op in ("wkv6", "wkv7"):
    xs, _ = W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device="cuda")
    fn = functools.partial(W.wkv7, logw_min=W.RWKV7_LOGW_MIN) if op == "wkv7" else W.wkv6
    with torch.no_grad():
        nog = do_bench(lambda: fn(*xs), return_mode="median")
    xg = [x.detach().requires_grad_() for x in xs]
    g = do_bench(lambda: fn(*xg), return_mode="median")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        fn(*xg)
    host = (time.perf_counter() - t) / 20 * 1e3
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 20 * 1e3
    print(f"{op}: do_bench no grad {nog:.3f} ms, with grad {g:.3f} ms; 20 calls back to back: host {host:.3f} ms, "
          f"wall {wall:.3f} ms per call")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(10):
            fn(*xg)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=50))
