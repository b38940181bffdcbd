"""Where the GPU waits, from a torch.profiler trace (bench.py distill --profile N --trace FILE): the gaps between its
kernels, and what the CPU was running in them. python gaps.py TRACE[.gz] [MIN_GAP_US]
Prints the GPU's span, busy and idle time; then the gaps of at least MIN_GAP_US (default 50) grouped by the CPU's
stack at each gap's middle (outermost op > innermost op, per CPU thread), the largest total first."""
import collections
import gzip
import json
import sys

path, min_gap = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 50.0
events = json.load(gzip.open(path) if path.endswith(".gz") else open(path))["traceEvents"]
spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
gpu = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
gaps, busy, (s0, e0) = [], 0.0, gpu[0]
for s, e in gpu[1:]:
    if s > e0:
        gaps.append((e0, s))
        busy, s0 = busy + e0 - s0, s
    e0 = max(e0, e)
busy += e0 - s0
span = e0 - gpu[0][0]
print(f"GPU: {span / 1e3:.1f} ms from first kernel to last, busy {busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms "
      f"({100 * (span - busy) / span:.1f}%) in {len(gaps)} gaps")
big = [g for g in gaps if g[1] - g[0] >= min_gap]
print(f"{len(big)} gaps of at least {min_gap:.0f} us: {sum(b - a for a, b in big) / 1e3:.1f} ms")

cpu = collections.defaultdict(list)  # thread -> its CPU-side spans, by start
for e in spans:
    if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function"):
        cpu[e["tid"]].append((e["ts"], e["ts"] + e["dur"], e["name"]))
for v in cpu.values():
    v.sort()


def stacks_at(times):  # {t: [(thread, its spans containing t, outermost first)]}: one sweep per thread (spans nest)
    out = {t: [] for t in times}
    for tid, sp in cpu.items():
        i, st = 0, []
        for t in sorted(times):
            while i < len(sp) and sp[i][0] <= t:
                while st and st[-1][1] < sp[i][0]:
                    st.pop()
                st.append(sp[i])
                i += 1
            while st and st[-1][1] < t:
                st.pop()
            if st:
                out[t].append((tid, [n for _, _, n in st]))
    return out


at = stacks_at([(a + b) / 2 for a, b in big])
groups, where = collections.defaultdict(float), collections.defaultdict(list)
for a, b in big:
    stacks = at[(a + b) / 2]
    key = " | ".join(f"{st[0][:50]} > {st[-1][:50]}" for tid, st in stacks) or "(no CPU op)"
    groups[key] += b - a
    where[key].append(b - a)
print(f"\n{'idle ms':>8} {'gaps':>5} {'largest us':>10}  CPU stack at the gap's middle (outermost > innermost, per thread)")
for key, t in sorted(groups.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{t / 1e3:8.2f} {len(where[key]):5d} {max(where[key]):10.0f}  {key}")
print("\nthe 15 largest gaps: start (ms after the first kernel), length (us), each thread's whole stack")
for a, b in sorted(big, key=lambda g: g[0] - g[1])[:15]:
    print(f"{(a - gpu[0][0]) / 1e3:9.2f} {b - a:8.0f}  " + " | ".join(" > ".join(x[:40] for x in st)
                                                            for tid, st in at[(a + b) / 2]))
