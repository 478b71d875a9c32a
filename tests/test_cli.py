"""The command line."""
from __future__ import annotations

import json
import subprocess
import sys

from mtpllama.testing import SyntheticSpec


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mtpllama", *args], capture_output=True, text=True, timeout=300, **kw)


def test_inspect(model_files):
    r = run("inspect", "--tensors", model_files["glm45"])
    assert r.returncode == 0, r.stderr
    assert "MTP usable:    yes" in r.stdout and "nextn.embed_tokens.weight" in r.stdout
    s = SyntheticSpec()
    assert f"attention:     GQA: {s.n_head} heads, {s.n_head_kv} KV heads, head dim {s.head_dim} (rope {s.n_rot})" in r.stdout
    r = run("inspect", "--tensors", model_files["glm46"])
    assert "nextn.eh_proj.weight" in r.stdout and "nextn.embed_tokens" not in r.stdout  # GLM-4.6 ties it
    r = run("inspect", "--json", model_files["glm46"])
    info = json.loads(r.stdout)
    assert info["has_mtp"] and info["supported"] and info["arch"] == "glm4moe" and info["n_layer_nextn"] == 1
    r = run("inspect", model_files["trunk_only"])
    assert "trunk-only" in r.stdout


def test_inspect_and_model_agree_on_mtp(model_files):
    """One definition of a usable MTP head: inspect says no exactly where Model(mtp=True) refuses."""
    import mtpllama

    for name, path in model_files.items():
        info = mtpllama.inspect(path)
        try:
            with mtpllama.Model(path):
                loaded = True
        except mtpllama.NoMtpHeadError as e:
            loaded = False
            assert info.mtp_problem in str(e)
        assert info.has_mtp == loaded, name


def test_generate(model_files):
    r = run("generate", "-m", model_files["glm45"], "-p", "def foo(x):", "-n", "16", "--draft-max", "2", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "acceptance by position" in r.stderr
    plain = run("generate", "-m", model_files["glm45"], "-p", "def foo(x):", "-n", "16", "--no-mtp")
    assert plain.stdout == r.stdout


def test_generate_error_is_reported(model_files):
    r = run("generate", "-m", model_files["trunk_only"], "-p", "x", "-n", "4")
    assert r.returncode == 1
    assert "mtpllama: error:" in r.stderr and "mtp=False" in r.stderr
    assert "Traceback" not in r.stderr


def test_default_command_runs_demo():
    """`mtpllama` alone: the shipped model completes Python, with acceptance and both speeds."""
    r = run("-n", "32")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "default.gguf" in out and "completion:" in out and "class Queue:" in out
    acc = out.split("acceptance by draft position (3 drafts a step): ")[1].split(";")[0]
    assert [x.split(": ")[0] for x in acc.split(", ")] == ["1", "2", "3"]
    assert float(acc.split(", ")[0].split(": ")[1].rstrip("%")) >= 40
    for name in ("plain", "MTP, 3 drafts", "MTP, adaptive (defaults)"):
        assert name in out
    assert "MTP output identical to plain: True" in out
    assert "measured: a trunk pass over 1 row takes" in out  # the demo says what it measured


def test_bench(model_files):
    r = run("bench", "-m", model_files["glm45"], "-n", "24", "-r", "2", "-t", "1", "--ks", "1", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [ln.split()[0] for ln in lines[1:]]
    assert names == ["plain", "k=1", "k=2", "adaptive"]
    assert float(lines[1].split()[3]) == 1.0  # plain against itself
