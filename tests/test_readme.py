"""The README as a user reads it: every command in its code blocks (and in quickstart.sh) names a script,
subcommand and flags that exist (each script's --help runs and lists every flag used), and the line
counts it states are the files' own."""
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {"data.py": ("tokenize", "inspect"), "convert.py": ("gguf", "student", "export"),
               "bench.py": ("kernels", "decode", "distill")}


def commands(text):
    # the shell lines that run one of the project's scripts (continuation lines joined, comments dropped)
    text = re.sub(r"\\\n\s*", " ", text)
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        m = re.search(r"(?:^|\|\| run |^run )((?:python|torchrun) .*)", line)
        if not m:
            continue
        words = shlex.split(m.group(1), comments=True)
        scripts = [i for i, w in enumerate(words) if w.endswith(".py") and (ROOT / w).is_file()]
        if scripts:
            yield words[scripts[0]:]


def readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S) + re.findall(r"`(python [^`]+)`", readme)
    return [c for b in blocks for c in commands(b)] + list(commands((ROOT / "quickstart.sh").read_text()))


@lru_cache(maxsize=None)
def help_text(script, sub):
    r = subprocess.run([sys.executable, script, *([sub] if sub else []), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout, (script, sub, r.stderr)
    return r.stdout


def test_every_readme_command_exists():
    cmds = readme_commands()
    assert len(cmds) >= 12 and {c[0] for c in cmds} >= {"data.py", "convert.py", "distill.py", "eval.py"}
    for words in cmds:
        script, sub = words[0], None
        if script in SUBCOMMANDS:
            sub = words[1]
            assert sub in SUBCOMMANDS[script], f"{' '.join(words)}: no subcommand {sub!r}"
        text = help_text(script, sub)
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", text), f"{' '.join(words)}: {script} has no flag {flag}"


def test_line_counts():
    readme = (ROOT / "README.md").read_text()
    stated = dict(re.findall(r"^\| `(\w+\.py)` \| (\d+) \|", readme, re.M))
    stated["bench.py"] = re.search(r"`bench\.py` \((\d+) lines", readme).group(1)
    assert len(stated) == 7
    for name, n in stated.items():
        assert int(n) == len((ROOT / name).read_text().splitlines()), name
