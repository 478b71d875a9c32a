"""The tests every architecture added with its own test file runs, as classes to subclass (one per
test file): ``class TestMimo2(HeadsSuite): W = W``, the module defining W (the writer) and FILES
and importing the fixtures files, model and plain_outputs from here.  ArchSuite holds
greedy parity, low precision, batch invariance, truncation, the split halves, fuzzing and the sampled
distribution; HeadsSuite adds the several-head checks of heads_cases.py.  What differs between
architectures (the writer's layout, the rules' bad keys) stays in each test file."""
from __future__ import annotations

import os

import pytest

import mtpllama
from mtpllama.testing.fixtures import ONE_THREAD, PROMPTS
from heads_cases import (check_each_head_drafts_its_position, check_head_left_behind_catches_up,
                         check_heads_catch_up_when_reached, check_memory_counts_every_head)
from mla_cases import check_sampled_distribution, check_split_halves
from recurrent_cases import check_low_precision, check_mtp_equals_plain, check_truncation
from test_batch_invariance import compare
from test_reference import PROMPT


# the fixtures the suites use, for the test modules to import: they read the module's W and FILES
@pytest.fixture(scope="module")
def files(request, tmp_path_factory) -> dict[str, str]:
    w = request.module.W
    d = tmp_path_factory.mktemp(w.ARCH)
    return {k: str(w.write_synthetic(d / f"{k}.gguf", spec)) for k, spec in request.module.FILES.items()}


@pytest.fixture(scope="module")
def model(files):
    with mtpllama.Model(files["f32"], session_defaults=ONE_THREAD) as m:
        yield m


@pytest.fixture(scope="module")
def plain_outputs(model):
    return {p: model.generate(p, 64, mtp=False) for p in PROMPTS}


class ArchSuite:
    W = None                    # the architecture's writer module (mtpllama.testing.arch); the module's
                                # FILES: SyntheticSpecs by name, "f32" (the model), "f16", "q8_0", ...
    FUZZ_SEED = 0
    SAMPLED_N = 6000            # draws a side in the sampled test (fewer where a draw is slow)

    def sampled_prompt(self, model) -> list[int]:
        """The prefix the sampled test continues (its first 4 tokens must vary enough)."""
        return model.tokenize(PROMPT)[:6]

    @pytest.mark.parametrize("draft_max", [1, 2, 3, 4, 5, 6])
    @pytest.mark.parametrize("p_min", [0.0, 0.85])
    def test_mtp_equals_plain(self, model, plain_outputs, draft_max, p_min):
        """22 prompts x 64 tokens (past the test files' 12-token windows), fixed draft lengths 1..6
        (with 3 heads, 4..6 recurse with the last)."""
        check_mtp_equals_plain(model, plain_outputs, draft_max, p_min)

    @pytest.mark.parametrize("dtype", ["f16", "q8_0"])
    def test_mtp_equals_plain_low_precision(self, files, dtype):
        check_low_precision(files[dtype])

    @pytest.mark.parametrize("dtype", ["f32", "q8_0"])
    @pytest.mark.parametrize("k", [1, 4])
    def test_verified_rows_equal_lone_rows(self, files, dtype, k):
        with mtpllama.Model(files[dtype]) as m:
            same, diff = compare(m, PROMPT, 48, k, threads=1)
        assert same >= 20 and diff == 0, (same, diff)

    def test_truncation_continues_as_a_fresh_context(self, model):
        check_truncation(model)

    def test_split_halves_draft_as_the_full_file(self, files, tmp_path):
        check_split_halves(files["f32"], tmp_path)

    @pytest.mark.slow
    def test_fuzzed_files_never_crash_or_hang(self, tmp_path):
        import fuzz_gguf

        base = self.W.write_synthetic(tmp_path / "base.gguf", self.W.SyntheticSpec(seed=79))
        n = int(os.environ.get("MTPLLAMA_FUZZ_CASES", "1500")) // 4
        failures = fuzz_gguf.run(str(base), n, seed=self.FUZZ_SEED, batch=250, timeout_per_case=20.0)
        assert not failures, failures[:5]

    @pytest.mark.slow
    def test_sampled_mtp_has_plain_sampling_distribution(self, model):
        """Three drafts a step, verified as the defaults verify (see mla_cases.check_sampled_distribution)."""
        check_sampled_distribution(model, self.sampled_prompt(model), self.SAMPLED_N)


class HeadsSuite(ArchSuite):
    """FILES also holds "broken1" and "broken2": the "f32" file with heads 1 and 2 flattened."""
    N_HEADS = 3

    def test_each_head_drafts_its_position(self, files):
        check_each_head_drafts_its_position(files["f32"], files["broken1"], files["broken2"])

    def test_heads_catch_up_when_reached(self, model):
        check_heads_catch_up_when_reached(model, self.N_HEADS)

    def test_a_head_left_behind_catches_up_apart(self, model):
        check_head_left_behind_catches_up(model, self.N_HEADS)

    def test_memory_counts_every_head(self, tmp_path):
        check_memory_counts_every_head(self.W, self.W.SyntheticSpec(seed=9), tmp_path)

    def test_more_heads_than_the_engine_chains_are_refused(self, tmp_path):
        """Drafting is refused with a reason; plain decoding still runs."""
        path = str(self.W.write_synthetic(tmp_path / "nine.gguf", self.W.SyntheticSpec(seed=73, n_nextn=9)))
        info = mtpllama.inspect(path)
        assert not info.has_mtp and "supports 8" in info.mtp_problem
        with mtpllama.Model(path, mtp=False) as m:
            assert len(m.generate("def f(x):", 8).tokens) == 8
