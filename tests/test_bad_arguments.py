"""Bad arguments, one table for every entry point: each raises a clear Python exception (of the
type and, where given, with the words stated), and the model stays usable."""
from __future__ import annotations

import pytest

import mtpllama
from mtpllama import SamplingConfig, SessionConfig, SpecConfig


def _gen(m, **kw):
    args = dict(prompt="def foo(x):", max_tokens=4)
    args.update(kw)
    return m.generate(args.pop("prompt"), args.pop("max_tokens"), **args)


BAD_CALLS = [
    # (entry point, call(model, path), exception or None (accepted), words the message holds)
    ("Model", lambda m, f: mtpllama.Model(123), TypeError, ""),
    ("Model", lambda m, f: mtpllama.Model(), TypeError, "path"),
    ("Model", lambda m, f: mtpllama.Model(f, config=mtpllama.ModelConfig(f)), TypeError, "not both"),
    ("Model", lambda m, f: mtpllama.Model(f, n_gpu_layers="all"), TypeError, ""),
    ("Model", lambda m, f: mtpllama.Model(f, n_gpu_layers=-7), ValueError, "n_gpu_layers"),
    ("Model", lambda m, f: mtpllama.Model(f, tensor_overrides=["a=b=c\nx"]), ValueError, ""),
    ("Model", lambda m, f: mtpllama.Model(f, tensor_overrides=["nonsense"]), ValueError, "REGEX=DEVICE"),
    ("Model", lambda m, f: mtpllama.Model(f, tensor_overrides=["blk\\.2\\..*=NoSuchDevice"]),
     mtpllama.InvalidArgumentError, "unknown"),
    ("Model", lambda m, f: mtpllama.Model(f, tensor_overrides=["blk[=CPU"]), mtpllama.InvalidArgumentError, "regex"),
    ("Model", lambda m, f: mtpllama.Model(f, use_mmap=1), TypeError, "use_mmap"),
    ("Model", lambda m, f: mtpllama.Model(f, use_mmap="auto"), TypeError, "use_mmap"),
    ("Model", lambda m, f: mtpllama.Model(f, mtp_path=123), TypeError, "mtp_path"),
    ("Model", lambda m, f: mtpllama.Model(f, mtp_path=""), TypeError, "mtp_path"),
    ("Model", lambda m, f: mtpllama.Model(f, mtp_path="/no/such/head.gguf"), mtpllama.ModelNotFoundError, "head.gguf"),
    ("Model", lambda m, f: mtpllama.Model(f, mtp_path=f), mtpllama.MtpMismatchError, "full model"),
    ("inspect", lambda m, f: mtpllama.inspect(None), TypeError, ""),
    ("inspect", lambda m, f: mtpllama.inspect(f + ".missing"), mtpllama.ModelNotFoundError, "not found"),
    ("Model.tokenize", lambda m, f: m.tokenize(b"bytes"), TypeError, ""),
    ("Model.tokenize", lambda m, f: m.tokenize(None), TypeError, ""),
    ("Model.detokenize", lambda m, f: m.detokenize([-1]), ValueError, ""),
    ("Model.detokenize", lambda m, f: m.detokenize([10**9]), ValueError, ""),
    ("Model.session", lambda m, f: m.session(n_ctx=-5), ValueError, ""),
    ("Model.session", lambda m, f: m.session(n_ctx=10**8), mtpllama.InvalidArgumentError, "training context"),
    ("Model.session", lambda m, f: m.session(n_ctx=4), mtpllama.InvalidArgumentError, ""),
    ("Model.session", lambda m, f: m.session(n_batch=4), mtpllama.InvalidArgumentError, ""),
    ("Model.session", lambda m, f: m.session(n_threads=-2), ValueError, ""),
    ("Model.session", lambda m, f: m.session(n_ctx="big"), TypeError, ""),
    ("Model.session", lambda m, f: m.session(SessionConfig(), n_ctx=5), TypeError, ""),
    ("Model.session", lambda m, f: m.session(bogus=1), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, max_tokens=0), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, max_tokens=-5), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, max_tokens=1.5), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, max_tokens=True), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, max_tokens=2**40), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=""), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=[]), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=3.0), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=[1, "2"]), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=[m.info.n_vocab]), mtpllama.InvalidArgumentError, "vocabulary"),
    ("Model.generate", lambda m, f: _gen(m, prompt=[10**6]), mtpllama.InvalidArgumentError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=[-1]), mtpllama.InvalidArgumentError, ""),
    ("Model.generate", lambda m, f: _gen(m, prompt=[1] * 5000), mtpllama.ContextOverflowError, ""),
    ("Model.generate", lambda m, f: _gen(m, draft_max=-1), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, draft_max=mtpllama.SpecConfig().draft_max + 99), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, draft_p_min=1.5), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, draft_p_min=-0.1), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, draft_p_min=float("nan")), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, temperature=-0.5), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, seed=-3), ValueError, ""),
    ("Model.generate", lambda m, f: _gen(m, spec="fast"), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, sampling={"temperature": 1}), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, stop="x"), None, ""),  # a str is a sequence of 1-char stops
    ("Model.generate", lambda m, f: _gen(m, stop=[None]), TypeError, ""),
    ("Model.generate", lambda m, f: _gen(m, stop=[3]), TypeError, ""),
    ("Model.stream", lambda m, f: list(m.stream("x", -1)), ValueError, ""),
    ("SpecConfig", lambda m, f: SpecConfig(draft_max=-1), ValueError, ""),
    ("SpecConfig", lambda m, f: SpecConfig(adaptive="yes"), TypeError, ""),
    ("SpecConfig", lambda m, f: SpecConfig(verify="test_accept_all"), ValueError, "verify"),
    ("SamplingConfig", lambda m, f: SamplingConfig(top_p=0), ValueError, ""),
    ("SessionConfig", lambda m, f: SessionConfig(n_threads=1.5), TypeError, ""),
]


@pytest.mark.parametrize("entry,call,exc,words", BAD_CALLS,
                         ids=[f"{e}-{i}" for i, (e, _, _, _) in enumerate(BAD_CALLS)])
def test_bad_arguments_table(glm45, model_files, entry, call, exc, words):
    if exc is None:
        call(glm45, model_files["glm45"])
    else:
        with pytest.raises(exc, match=words or None):
            call(glm45, model_files["glm45"])
    assert len(glm45.generate("x", 3).tokens) == 3  # nothing broken
