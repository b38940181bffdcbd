# Validation KL of step 2 against tokens for the pure student and the three K = 4 choices of attention layers at 80M
# (metrics.jsonl of each run). python results/smollm2_even_last80m_h200/plot.py
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = Path(__file__).resolve().parents[1]
RUNS = {"pure": R / "smollm2_80m_h200/stage2_metrics.jsonl",
        "ranked (1, 8, 2, 10)": R / "smollm2_hybrid80m_h200/h4_stage2_metrics.jsonl",
        "evenly spaced (6, 12, 18, 24)": R / "smollm2_even_last80m_h200/even_stage2_metrics.jsonl",
        "last (26-29)": R / "smollm2_even_last80m_h200/last_stage2_metrics.jsonl"}
fig, ax = plt.subplots(figsize=(7, 4))
for name, path in RUNS.items():
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    val = [(r["step"] * 96 * 512 / 1e6, r["val_loss"]) for r in rows if "val_loss" in r]
    ax.plot(*zip(*val), marker=".", label=f"{name}: {val[-1][1]:.3f}")
ax.set(xlabel="step-2 tokens (M)", ylabel="validation KL (nats/token)", yscale="log",
       title="SmolLM2-135M -> RAD-RWKV7 step 2 after 20M of step 1, K = 4 of 30")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(Path(__file__).with_name("val_kl.png"), dpi=110)
