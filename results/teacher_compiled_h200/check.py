# the compiled teacher (and loss) against eager on the GPU: one batch, steps 1 and 2, float32 and bfloat16
import sys, time
sys.path.insert(0, ".")
import torch
import distill, model as M
from torch.distributed.fsdp import MixedPrecisionPolicy

rank, world, device = distill.setup_distributed()
tcfg = M.ModelConfig.from_name("smollm2-135m")
batch = torch.randint(0, tcfg.vocab_size, (8, 513), generator=torch.Generator().manual_seed(0)).to(device)
for dtype in ("float32", "bfloat16"):
    for stage in (1, 2):
        got = []
        for compile in (False, True):
            t = time.time()
            cfg = distill.Config(**distill.STAGES[stage]); cfg.stage, cfg.init_from, cfg.compile, cfg.dtype = stage, "teacher", compile, dtype
            mp = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
            teacher, student = distill.build(cfg, device, mp, teacher_cfg=tcfg)
            hooks = distill.attention_hooks(teacher) if stage == 1 else None
            with torch.no_grad():
                got.append(distill.step_loss(cfg, teacher, student, batch, hooks)[1][0].item())
            print(f"{dtype} step {stage} compile={compile}: objective {got[-1]:.6f} ({time.time() - t:.0f} s)", flush=True)
        print(f"{dtype} step {stage}: relative difference {abs(got[1] - got[0]) / abs(got[0]):.2e}", flush=True)
torch.distributed.destroy_process_group()
