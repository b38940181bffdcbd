# wkv7 on SmolLM2's inputs in bfloat16, the GPU's arithmetic emulated (bf16emu.py, as tests/test_wkv.py's
# gpu_arithmetic fixture), on variants of the kernels: EDITS store an intermediate in float32 or compute a product in
# float32 / TF32; "K:KERNEL[:LINE...]" makes KERNEL's products TF32 (on its lines containing LINE); "&" joins edits.
# From the root: SRC=<kernels> WKV_REAL_INPUTS=<file> python results/wkv7_da_bf16_cpu/sweep.py LAYERS COMBO...
import os, subprocess, sys
src = open(os.environ.get("SRC", "wkv_kernel.py")).read()  # the kernels before b6b82eb: git show e1f4d02:wkv_kernel.py
EDITS = {
  "mm": ("        return tl.dot(x.to(tl.bfloat16), y.to(tl.bfloat16))\n",
         "        return tl.dot(x.to(tl.float32), y.to(tl.float32), input_precision=\"ieee\")\n"),
  "mats": ("mats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=dtype)", "mats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=torch.float32)"),
  "dmats": ("dmats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=A.dtype)", "dmats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=torch.float32)"),
  "Y": ("Y, dY = (R, R) if a is None else (torch.empty_like(R), torch.empty_like(R))",
        "Y, dY = (R, R) if a is None else (torch.empty_like(R, dtype=torch.float32), torch.empty_like(R, dtype=torch.float32))"),
  "states": ("states = r.new_empty(B * H, int(NT), N, N, dtype=R.dtype)", "states = r.new_empty(B * H, int(NT), N, N, dtype=torch.float32)"),
  "RK": ("R, K = (r.new_empty(B, T, H, N, dtype=dtype) for _ in range(2))", "R, K = (r.new_empty(B, T, H, N, dtype=torch.float32) for _ in range(2))"),
  "TdW": ("_mm(tl.trans(tl.load(Tm + p_m)), b_dW, BF16)", "tl.dot(tl.trans(tl.load(Tm + p_m)).to(tl.float32), b_dW, input_precision='ieee')"),
  "ArbdR": ("b_dW += _mm(tl.trans(tl.load(Arbm + p_m)), b_dR, BF16)", "b_dW += tl.dot(tl.trans(tl.load(Arbm + p_m)).to(tl.float32), b_dR, input_precision='ieee')"),
  "solve": ("        return tl.dot(x, y, input_precision=\"tf32\")\n", "        return tl.dot(x, y, input_precision=\"ieee\")\n"),
  "labout": ("_mm(_mm(b_Tt, b_dT, BF16), b_Tt, BF16)", "_mm(_mm(b_Tt, b_dT, BF16), b_Tt.to(tl.float32), False)"),
  "labin": ("_mm(_mm(b_Tt, b_dT, BF16), b_Tt, BF16)", "_mm(_mm(b_Tt.to(tl.float32), b_dT, False), b_Tt, BF16)"),
  "lab2": ("_mm(_mm(b_Tt, b_dT, BF16), b_Tt, BF16)", "_mm(_mm(b_Tt, b_dT, False), b_Tt, False)"),
  "labx": ("_mm(_mm(b_Tt, b_dT, BF16), b_Tt, BF16)", "tl.dot(tl.dot(b_Tt.to(tl.float32), b_dT, input_precision='ieee'), b_Tt.to(tl.float32), input_precision='ieee')"),
  "P4": ("b_P4 += _mm(b_dY + _mm(tl.trans(b_Arb), b_do, BF16), tl.trans(b_Z), BF16)", "b_P4 += _mm(b_dY + _mm(tl.trans(b_Arb), b_do, BF16), tl.trans(b_Z), False)"),
  "A": ("A = r.new_empty(B, T, H, CHUNK, dtype=dtype)", "A = r.new_empty(B, T, H, CHUNK, dtype=torch.float32)"),
}
def kernel_tf32(s, name, lines=None):
    # the kernel's products in TF32 (BF16 False in its calls), or only on its lines that contain one of LINES
    i = s.index(f"def {name}(")
    j = s.index("@triton.jit", i) if "@triton.jit" in s[i:] else len(s)
    body = s[i:j].split("\n")
    body = [l.replace(", BF16)", ", False)") if (lines is None or any(x in l for x in lines)) else l for l in body]
    return s[:i] + "\n".join(body) + s[j:]
for combo in sys.argv[2:]:
    s = src
    for e in filter(None, combo.split("&")):
        if e.startswith("K:"):
            parts = e[2:].split(":")
            s = kernel_tf32(s, parts[0], parts[1:] or None); continue
        old, new = EDITS[e]
        assert old in s, e
        s = s.replace(old, new)
    d = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"wkv_var_{combo or 'base'}")
    os.makedirs(d, exist_ok=True)
    open(f"{d}/wkv_kernel.py", "w").write(s)
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu.py"), "bfloat16", sys.argv[1]], capture_output=True, text=True,
                         env=dict(os.environ, VARDIR=d, TRITON_INTERPRET="1", OMP_NUM_THREADS="2"))
    lines = [l for l in out.stdout.splitlines() if "s o " in l] or [out.stderr[-1500:]]
    for l in lines: print(f"{combo or 'base':24s} {l}", flush=True)
