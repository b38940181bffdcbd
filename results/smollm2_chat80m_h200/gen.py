"""A chat corpus sampled from the teacher, then written after the documents of a binidx corpus as one binidx.
python gen.py TEACHER BASE_PREFIX OUT_PREFIX TOKENS SECONDS
Rows of 512 new tokens, 1024 at a time, from the chat template's system turn and an open user turn, at
temperature 1 (the teacher's own distribution: it writes a user's request, then answers it, and goes on), until
TOKENS new tokens or SECONDS have passed; each row is one document with EOS. The first 16 go to OUT_PREFIX.txt.
Not model.generate: it prefills each prompt alone and collects tokens row by row; here all rows share one prompt."""
import os
import sys
import time

import torch

sys.path.insert(0, ".")
import convert, data, model  # noqa: E402

teacher, base, out, n_tokens, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
B, L, t0 = int(os.environ.get("GEN_B", 1024)), int(os.environ.get("GEN_L", 512)), time.time()
dev = "cuda" if torch.cuda.is_available() else "cpu"
m = convert.load_model(teacher, device=dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32).eval()
tok = data.load_tokenizer(teacher)
p = tok.encode("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n", allowed_special="all")
dec = model.GraphDecoder(m, B, len(p) + L)
gen = torch.Generator(device=dev).manual_seed(1234)
prompt = torch.tensor([p], device=dev).expand(B, -1)
rows = []
with torch.no_grad():
    while len(rows) * L < n_tokens and time.time() - t0 < seconds:
        dec.cache["lens"].zero_()
        logits = m(prompt, dec.cache)[:, -1]
        new = torch.empty(B, L, dtype=torch.long, device=dev)
        for i in range(L):
            new[:, i] = model.sample(logits.float(), 1.0, 1.0, gen)
            if i + 1 < L:
                logits = dec.step(new[:, i])
        rows += [p + r + [tok.eot_id] for r in new.tolist()]
        print(f"{len(rows) * L / 1e6:.1f}M tokens, {time.time() - t0:.0f} s", flush=True)
with open(f"{out}.txt", "w") as f:
    f.write("\n\n=====\n\n".join(tok.decode(r) for r in rows[:16]))
base_ds = data.BinIdx(base)
docs = (base_ds.doc(i) for i in range(len(base_ds)))
n_docs, n = data.write_binidx(out, (d for it in (docs, rows) for d in it), tok.n_vocab, tok)
print(f"{out}: {n_docs} documents, {n / 1e6:.1f}M tokens ({len(rows)} sampled, {len(rows) * (L + len(p) + 1) / 1e6:.1f}M)"
      f", {time.time() - t0:.0f} s")
