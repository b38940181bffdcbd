# Validation KL of step 2 against tokens for the pure student and every K = 2 and K = 4 choice of attention layers
# in the README's SmolLM2 table (80M recipe, metrics.jsonl of each run). python results/smollm2_last2_h100/plot.py
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = Path(__file__).resolve().parents[1]
RUNS = {2: {"ranked by trained steps (17, 23)": "smollm2_rank2_h100/g_stage2_metrics.jsonl",
            "evenly spaced (10, 20)": "smollm2_rank2_h100/even_stage2_metrics.jsonl",
            "last (28, 29)": "smollm2_last2_h100/last_stage2_metrics.jsonl",
            "zero-shot ranking (1, 8)": "smollm2_hybrid80m_h200/h2_stage2_metrics.jsonl"},
        4: {"ranked by trained steps (17, 18, 23, 24)": "smollm2_rank_h100/g_stage2_metrics.jsonl",
            "evenly spaced (6, 12, 18, 24)": "smollm2_even_last80m_h200/even_stage2_metrics.jsonl",
            "last (26-29)": "smollm2_even_last80m_h200/last_stage2_metrics.jsonl",
            "zero-shot ranking (1, 8, 2, 10)": "smollm2_hybrid80m_h200/h4_stage2_metrics.jsonl"}}
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, (k, runs) in zip(axes, RUNS.items()):
    for name, path in {"pure (no attention)": "smollm2_80m_h200/stage2_metrics.jsonl", **runs}.items():
        rows = [json.loads(line) for line in (R / path).read_text().splitlines()]
        val = [(r["step"] * 96 * 512 / 1e6, r["val_loss"]) for r in rows if "val_loss" in r]
        ax.plot(*zip(*val), marker=".", label=f"{name}: {val[-1][1]:.3f}")
    ax.set(xlabel="step-2 tokens (M)", yscale="log", title=f"K = {k} of 30 layers kept as attention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
axes[0].set_ylabel("validation KL (nats/token)")
fig.suptitle("SmolLM2-135M -> RAD-RWKV7, step 2 after 20M tokens of step 1")
fig.tight_layout()
fig.savefig(Path(__file__).with_name("val_kl.png"), dpi=110)
