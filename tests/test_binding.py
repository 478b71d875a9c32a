"""The binding: version handshake, one foreign call per step, the log route."""
from __future__ import annotations

import logging

import mtpllama
from mtpllama import SpecConfig, _lib, model as model_mod


def test_version_handshake():
    assert _lib.ffi.string(_lib.lib.mtpl_version()).decode() == mtpllama.__version__
    commit = _lib.ffi.string(_lib.lib.mtpl_upstream_commit()).decode()
    assert commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f" or commit  # a user's own checkout may differ


class CountingLib:
    def __init__(self, real):
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def wrapper(*a):
            self.calls.append(name)
            return fn(*a)

        return wrapper


def test_one_foreign_call_per_step(glm45, monkeypatch):
    glm45.pieces  # the piece table is fetched once per model, not per generation
    s = glm45.session()
    counting = CountingLib(_lib.lib)
    monkeypatch.setattr(model_mod, "lib", counting)
    r = s.generate("def foo(x):", 64, spec=SpecConfig(3, 0.0, adaptive=False))
    steps = counting.calls.count("mtpl_session_step")
    # one call per verification pass (stats.steps also counts the prompt pass,
    # whose token the first call emits together with its own verified tokens)
    assert steps == r.stats.steps - 1
    assert steps < len(r.tokens) / 2  # drafting really emitted several tokens per call
    others = [c for c in counting.calls if c != "mtpl_session_step"]
    # set-up and teardown calls are a fixed handful, independent of the token count
    assert len(others) <= 6, others
    monkeypatch.undo()
    s.close()


def test_llama_log_routed_to_logging(model_files, caplog):
    caplog.set_level(logging.INFO, logger="mtpllama")
    _lib.route_log(logging.INFO)
    try:
        with mtpllama.Model(model_files["glm46"]):
            pass
    finally:
        _lib.route_log(logging.WARNING)
    assert any(r.name == "mtpllama.llama_cpp" for r in caplog.records)
