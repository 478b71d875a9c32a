"""The shipped default model (python/mtpllama/models/default.gguf), trained by
training/train.py on the Python standard library.

It is the most realistic model of the suite: trained activations, an MTP head that
learnt something, and a real tokenizer.  These tests check the artifact as shipped
(its manifest), that llama.cpp tokenizes Python source as training did and gives it
back byte for byte, that its completions are Python, that greedy MTP decoding equals
plain greedy decoding on it, and that its MTP head is accepted as often as the
manifest says.  (Its numerics against the numpy reference: test_reference.py.)
"""
from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from pathlib import Path

import pytest

import mtpllama
from mtpllama import SessionConfig, SpecConfig
from mtpllama.default_model import default_model_path

MODEL = Path(mtpllama.__file__).resolve().parent / "models" / "default.gguf"
MANIFEST = json.loads(MODEL.with_suffix(".json").read_text())
STDLIB = Path(sysconfig.get_paths()["stdlib"])
ONE_THREAD = SessionConfig(n_threads=1)


def held_out_texts() -> list[str]:
    """The held-out files of the manifest that this interpreter has (at least most of them)."""
    texts = [(STDLIB / n).read_text(encoding="utf-8") for n in MANIFEST["corpus"]["held_out_files"]
             if (STDLIB / n).exists()]
    assert len(texts) >= len(MANIFEST["corpus"]["held_out_files"]) // 2
    return texts


def function_prompts(texts: list[str], n: int = 12) -> list[str]:
    """A function's preceding lines and its signature: the body is left to complete."""
    out = []
    for text in texts:
        lines = text.split("\n")
        defs = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("def ") and ln.rstrip().endswith(":")]
        for i in defs[:: max(1, len(defs) // 3)][:3]:
            out.append("\n".join(lines[max(0, i - 8): i + 1]) + "\n")
    return out[:n]


@pytest.fixture(scope="module")
def model():
    with mtpllama.Model(str(MODEL), session_defaults=ONE_THREAD) as m:
        yield m


def test_shipped_file_is_the_trained_one():
    data = MODEL.read_bytes()
    assert len(data) <= 32 * 2**20
    assert hashlib.sha256(data).hexdigest() == MANIFEST["sha256"]
    assert default_model_path() == MODEL
    s = mtpllama.inspect(MODEL)
    assert s.arch == "glm4moe" and s.supported and s.has_mtp and s.n_layer_nextn == 1


def test_model_shape(model):
    info = model.info
    assert info.n_vocab == MANIFEST["tokenizer"]["n_vocab"]
    assert info.file_has_mtp and info.mtp_loaded
    assert info.n_layer == MANIFEST["shape"]["n_layer"] and info.n_layer_nextn == 1


def test_tokenizer_round_trips_held_out_source(model):
    texts = held_out_texts()
    for text in texts:
        toks = model.tokenize(text)
        assert model.detokenize(toks) == text
        assert model.token_bytes(toks) == text.encode("utf-8")
    # beyond the corpus: non-ASCII text and control characters come back too
    odd = "naïve → ünïcödé ✓ 漢字 🙂\t\r\n\x00\x7f end"
    assert model.detokenize(model.tokenize(odd)) == odd


def test_tokenizer_compresses_python_source(model):
    text = "\n".join(held_out_texts())
    n = len(model.tokenize(text))
    assert len(text.encode()) / n > 3.0, "the trained merges are not being used"


def parses_as_function(prompt: str, completion: str, min_lines: int = 3) -> bool:
    """Does `def ...:` + the completed body parse as Python, once cut to whole lines?

    The generation stops at a token budget, so the last line is dropped, an open docstring is
    closed, and up to 3 more trailing lines (an unfinished bracket) may be dropped; at least
    min_lines body lines must remain."""
    sig = prompt.rstrip("\n").split("\n")[-1]
    indent = len(sig) - len(sig.lstrip())
    lines = [ln[indent:] for ln in completion.split("\n")[:-1]]
    for cut in range(0, 4):
        body = lines[:len(lines) - cut]
        if len([ln for ln in body if ln.strip()]) < min_lines:
            return False
        src = "\n".join([sig.lstrip()] + body)
        if src.count('"""') % 2:
            src += '\n    """'
        if src.rstrip().endswith(":"):
            src += "\n" + " " * (8 + len(src.rstrip().split("\n")[-1]) - len(src.rstrip().split("\n")[-1].lstrip())) + "pass"
        try:
            ast.parse(src + "\n")
            return True
        except SyntaxError:
            continue
    return False


def test_parses_as_function_checks_something():
    sig = "def f(x):\n"
    assert parses_as_function(sig, '    """Doc.\n\n    More doc\n    y = x + 1\n    return y\n')
    assert not parses_as_function(sig, "    y = = x\n    return y +\n    ) ) )\n    while\n    for\n")
    assert not parses_as_function(sig, "the quick brown fox\njumps over\nthe lazy dog\n\n")


def test_greedy_completion_is_python(model):
    """Greedy completions of held-out functions are Python: most of them parse (it is a
    10M-parameter model trained for 40 CPU-minutes: the content repeats itself)."""
    prompts = function_prompts(held_out_texts())
    ok = sum(parses_as_function(p, model.generate(p, 64).text) for p in prompts)
    assert ok >= len(prompts) // 2, f"only {ok} of {len(prompts)} completions parse"


@pytest.mark.parametrize("draft_max", [1, 2, 3, 4])
def test_greedy_mtp_equals_plain_on_trained_model(model, draft_max):
    prompts = function_prompts(held_out_texts())
    with model.session(mtp=False) as plain, model.session() as s:
        for p in prompts:
            plain.reset()
            s.reset()
            want = plain.generate(p, 64).tokens
            got = s.generate(p, 64, spec=SpecConfig(draft_max=draft_max, draft_p_min=0.0, adaptive=False)).tokens
            assert got == want, f"draft_max {draft_max}: MTP output differs from plain decoding for {p!r}"


def test_mtp_head_is_accepted(model):
    """First-position acceptance on held-out functions >= 40%, as in the manifest."""
    drafted, accepted = [0] * 3, [0] * 3
    with model.session() as s:
        for p in function_prompts(held_out_texts()):
            s.reset()
            st = s.generate(p, 64, spec=SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False)).stats
            for i in range(3):
                drafted[i] += st.drafted[i] if i < len(st.drafted) else 0
                accepted[i] += st.accepted[i] if i < len(st.accepted) else 0
    acc = [a / d for a, d in zip(accepted, drafted)]
    assert acc[0] >= 0.40, acc
    assert acc[0] >= acc[1] >= acc[2] > 0.05, acc


def test_greedy_mtp_equals_plain_past_split_kv():
    """Past 256 positions the attention view is 512 cells: with 2 threads a lone decode row takes
    ggml's split-KV flash-attention kernel, which sums in another order than a batch's rows do.
    patches/0003 keeps small batches and lone rows on one kernel, so the outputs still agree."""
    texts = held_out_texts()
    cfg = SessionConfig(n_threads=2)
    with mtpllama.Model(str(MODEL)) as m, m.session(cfg, mtp=False) as plain, m.session(cfg) as s:
        checked = 0
        for text in texts[:6]:
            toks = m.tokenize(text)
            if len(toks) < 700:
                continue
            for off in (0, 350):
                prompt = toks[off: off + 330]
                plain.reset()
                s.reset()
                want = plain.generate(prompt, 150).tokens
                got = s.generate(prompt, 150, spec=SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False)).tokens
                assert got == want, f"MTP output differs from plain decoding past 256 positions (offset {off})"
                checked += 1
        assert checked >= 4
