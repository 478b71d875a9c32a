"""MTP heads in their own file: `extract_mtp` / `extract_trunk` split a full file as llama.cpp's
converter does (--mtp / --no-mtp), Model(trunk, mtp_path=head) drafts exactly as the full file
does, and a head of another model is refused before llama.cpp sees it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import mtpllama
from mtpllama import MtpMismatchError, NoMtpHeadError, SpecConfig, SplitError, extract_mtp, extract_trunk
from mtpllama.cli import main as cli_main
from mtpllama.testing import write_synthetic
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS, SPECS


@pytest.fixture(scope="module")
def halves(model_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    full = model_files["glm45"]
    return full, extract_mtp(full, d / "head.gguf"), extract_trunk(full, d / "trunk.gguf")


def tensors(path):
    import gguf

    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def test_the_halves_are_what_the_converter_writes(halves):
    full, head, trunk = halves
    kinds = [mtpllama.inspect(p).kind for p in (full, head, trunk)]
    assert kinds == ["full", "mtp-only", "trunk-only"]
    f, h, t = tensors(full), tensors(head), tensors(trunk)
    shared = {n for n in f if not n.startswith("blk.")}
    assert set(h) == shared | {n for n in f if n.startswith("blk.2.")}  # 2 trunk layers, the NextN block is 2
    assert set(t) == set(f) - {n for n in f if n.startswith("blk.2.")}
    for name in ("blk.2.nextn.eh_proj.weight", "token_embd.weight"):  # bytes copied, not converted
        assert h[name].tensor_type == f[name].tensor_type
        assert np.array_equal(np.asarray(h[name].data), np.asarray(f[name].data))
    ti = mtpllama.inspect(trunk)
    assert (ti.block_count, ti.n_layer_nextn, ti.has_mtp) == (2, 0, False)
    hi = mtpllama.inspect(head)
    assert (hi.block_count, hi.n_layer_nextn, hi.has_mtp) == (3, 1, True)


def test_a_trunk_with_its_head_file_drafts_as_the_full_file(halves):
    full, head, trunk = halves
    spec = SpecConfig(3, 0.0, adaptive=False)
    with mtpllama.Model(full, session_defaults=ONE_THREAD) as a, \
            mtpllama.Model(trunk, mtp_path=head, session_defaults=ONE_THREAD) as b:
        assert b.info.mtp_separate and b.info.file_has_mtp and b.info.n_layer_nextn == 1
        assert not a.info.mtp_separate
        for prompt in PROMPTS[:3]:
            ra, rb = a.generate(prompt, 32, spec=spec), b.generate(prompt, 32, spec=spec)
            assert ra.tokens == rb.tokens
            # the same head: the same drafts were proposed and accepted
            assert (ra.stats.drafted, ra.stats.accepted) == (rb.stats.drafted, rb.stats.accepted)
        plain = a.generate(PROMPTS[0], 32, mtp=False)
        assert b.generate(PROMPTS[0], 32).tokens == plain.tokens
        with mtpllama.Model(trunk, mtp=False) as c, c.session() as plain_s, b.session() as s:
            assert s.memory()["weights"] > plain_s.memory()["weights"]  # the head file's own weights count


def test_a_trunk_whose_quant_dropped_the_nextn_tensors_pairs_too(halves, tmp_path):
    _, head, _ = halves
    trunk_b = write_synthetic(tmp_path / "dropped.gguf", replace(SPECS["glm45"], nextn="none", nextn_declared=True))
    assert mtpllama.inspect(trunk_b).kind == "trunk-only"
    with mtpllama.Model(trunk_b, mtp_path=head, session_defaults=ONE_THREAD) as m:
        assert m.generate(PROMPTS[0], 16, spec=SpecConfig(2, 0.0, adaptive=False)).tokens == \
            m.generate(PROMPTS[0], 16, mtp=False).tokens


MISMATCHES = {  # another model's head: what differs -> the message names it
    "width": (dict(n_embd=96, head_dim=24), "embedding_length"),
    "layers": (dict(n_layer=3), "follows 3 trunk layers"),
    "vocabulary": (None, "tokenizer.ggml.tokens"),
    "experts": (dict(n_expert=16), "expert_count"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_head_of_another_model_is_refused(model_files, halves, tmp_path, case):
    _, _, trunk = halves
    changes, says = MISMATCHES[case]
    if changes is None:  # the same model but one token string: rewritten in place, same length
        import gguf

        other_head = extract_mtp(model_files["glm45"], tmp_path / "other-head.gguf")
        f = gguf.GGUFReader(str(other_head), "r+").fields["tokenizer.ggml.tokens"]
        f.parts[f.data[300]][:] = 0x7F
    else:
        other = write_synthetic(tmp_path / "other.gguf", replace(SPECS["glm45"], **changes))
        other_head = extract_mtp(other, tmp_path / "other-head.gguf")
    with pytest.raises(MtpMismatchError, match=says):
        mtpllama.Model(trunk, mtp_path=other_head)


def test_wrong_halves_are_refused(halves):
    full, head, trunk = halves
    with pytest.raises(MtpMismatchError, match="full model"):
        mtpllama.Model(trunk, mtp_path=full)
    with pytest.raises(NoMtpHeadError):
        mtpllama.Model(trunk, mtp_path=trunk)
    with pytest.raises(NoMtpHeadError, match="mtp_path"):
        mtpllama.Model(trunk)
    with pytest.raises(mtpllama.ModelLoadError, match="MTP-only"):
        mtpllama.Model(head)
    with pytest.raises(ValueError, match="mtp is False"):
        mtpllama.Model(trunk, mtp_path=head, mtp=False)
    with mtpllama.Model(trunk, mtp=False, session_defaults=ONE_THREAD) as m:  # a trunk alone decodes plainly
        assert len(m.generate(PROMPTS[0], 8).tokens) == 8


def test_extract_refuses_to_lose_anything(halves, tmp_path):
    full, head, trunk = halves
    out = tmp_path / "h.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(SplitError, match="exists"):
        extract_mtp(full, out)
    assert out.read_bytes() == b"mine"
    with pytest.raises(SplitError, match="input"):
        extract_mtp(full, full, force=True)
    with pytest.raises(SplitError, match="no NextN block"):
        extract_mtp(trunk, tmp_path / "x.gguf")
    with pytest.raises(SplitError, match="MTP-only"):
        extract_trunk(head, tmp_path / "y.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()
    extract_mtp(full, out, force=True)
    assert mtpllama.inspect(out).kind == "mtp-only"


def test_cli_extract_mtp(halves, tmp_path, capsys):
    full, _, _ = halves
    assert cli_main(["extract-mtp", str(full), "-o", str(tmp_path / "h.gguf")]) == 0
    assert cli_main(["extract-mtp", str(full), "--trunk-only", "-o", str(tmp_path / "t.gguf")]) == 0
    assert cli_main(["extract-mtp", str(full), "-o", str(tmp_path / "h.gguf")]) == 1  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert mtpllama.inspect(tmp_path / "t.gguf").kind == "trunk-only"
    assert cli_main(["inspect", str(tmp_path / "h.gguf")]) == 0
    assert "mtp-only" in capsys.readouterr().out
