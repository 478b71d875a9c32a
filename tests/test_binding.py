"""The binding: version handshake, one foreign call per step, the log route."""
from __future__ import annotations

import logging
import os

import pytest

import mtpllama
from mtpllama import SpecConfig, _lib, errors, model as model_mod


def test_version_handshake():
    assert _lib.ffi.string(_lib.lib.mtpl_version()).decode() == mtpllama.__version__
    commit = _lib.ffi.string(_lib.lib.mtpl_upstream_commit()).decode()
    from mtpllama import _build_info
    assert commit == _build_info.UPSTREAM_COMMIT
    if os.environ.get("MTPLLAMA_LLAMA_CPP_DIR"):
        pytest.skip("built against a checkout of the user's (MTPLLAMA_LLAMA_CPP_DIR)")
    # the pinned tree of cmake/fetch_upstream.py
    assert commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_constants_come_from_the_header():
    """The Python tables are the header's enums: every status maps to an exception class, the
    stop reasons and verify modes are the enums' names, and test hooks stay out of the public modes."""
    statuses = _lib.ffi.typeof("enum mtpl_status").relements
    for name, value in statuses.items():
        if value != _lib.OK:
            cls = _lib._STATUS_CLASSES[value]
            assert issubclass(cls, mtpllama.MtpllamaError) and cls is errors.STATUS_ERRORS[name[len("MTPL_ERR_"):]]
    assert set(_lib.STOP_REASONS.values()) == {"none", "eos", "length", "context"}
    assert set(_lib.VERIFY_MODES) == {"rejection", "exact", "coupled"}
    assert "test_accept_all" in _lib.VERIFY_MODES_ALL
    assert _lib.MAX_DRAFT == len(_lib.ffi.new("mtpl_stats *").drafted) == len(_lib.ffi.new("mtpl_stats *").drafts_per_step) - 1


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
