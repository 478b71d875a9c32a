"""Train the default model: ``python training/train.py`` (see training/README.md).

One command, seeded, deterministic for a given torch version and thread count:
corpus -> tokenizer -> tokens (cut by llama.cpp itself, so training sees
exactly what inference will) -> joint trunk + NextN training on the CPU ->
GGUF (f16) with our own writer -> evaluation through mtpllama (tokenizer round
trip, greedy completions, MTP acceptance per position) -> a JSON manifest
next to the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bpe  # noqa: E402
import corpus as corpus_mod  # noqa: E402
from glm4moe_torch import GLM4MoE, Shape  # noqa: E402
import mtpllama  # noqa: E402
from mtpllama.testing import SyntheticSpec, Tokenizer, write_synthetic  # noqa: E402

DEFAULT_OUT = HERE.parent / "python" / "mtpllama" / "models" / "default.gguf"


@dataclasses.dataclass(frozen=True)
class Recipe:
    seed: int = 20261129
    n_vocab: int = 4096
    tokens: int = 3_000_000          # training tokens seen
    batch: int = 8
    seq: int = 512
    lr: float = 2e-3
    lr_min: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    mtp_weight: float = 0.5          # loss = trunk CE + mtp_weight * NextN CE
    balance_rate: float = 1e-3       # selection-bias step per optimiser step
    threads: int = 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def spec_for(shape: Shape, name: str) -> SyntheticSpec:
    """The GGUF hyper-parameters of a trained shape (our writer takes them as a SyntheticSpec)."""
    return SyntheticSpec(
        n_embd=shape.n_embd, n_layer=shape.n_layer, n_dense_lead=shape.n_dense_lead, n_head=shape.n_head,
        n_head_kv=shape.n_head_kv, head_dim=shape.head_dim, n_rot=shape.n_rot, n_ff=shape.n_ff,
        n_expert=shape.n_expert, n_expert_used=shape.n_expert_used, n_expert_shared=shape.n_expert_shared,
        n_ff_exp=shape.n_ff_exp, qk_norm=False, expert_weights_norm=True,
        expert_weights_scale=shape.expert_weights_scale, nextn="tied", n_ctx_train=shape.n_ctx,
        dtype="f16", name=name)


def llama_tokenize(tok: Tokenizer, texts: list[str], workdir: Path) -> list[list[int]]:
    """Cut texts into tokens with llama.cpp: a tokenizer-only GGUF (tiny weights) loaded by mtpllama."""
    path = workdir / "tokenizer.gguf"
    write_synthetic(path, SyntheticSpec(n_embd=32, n_layer=1, n_head=2, n_head_kv=1, head_dim=16, n_rot=8,
                                        n_ff=32, n_expert=2, n_expert_used=1, n_ff_exp=32, nextn="none",
                                        nextn_declared=False), tok)
    with mtpllama.Model(str(path), mtp=False) as m:
        return [m.tokenize(t) for t in texts]


def join(docs: list[list[int]], eos: int) -> torch.Tensor:
    out: list[int] = []
    for d in docs:
        out += d + [eos]
    return torch.tensor(out, dtype=torch.long)


def lr_at(step: int, total: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, total - r.warmup)
    return r.lr_min + 0.5 * (r.lr - r.lr_min) * (1 + math.cos(math.pi * t))


def losses(model: GLM4MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trunk CE, NextN CE and the NextN arg-max's agreement with the trunk's, over a (B, L+1) batch."""
    trunk, mtp = model(x[:, :-1])
    y = x[:, 1:].reshape(-1)
    V = trunk.shape[-1]
    lt = F.cross_entropy(trunk.reshape(-1, V), y)
    # row 0 of the NextN block pairs with a zero state: skip it in the loss (the engine never drafts from it)
    lm = F.cross_entropy(mtp[:, 1:].reshape(-1, V), x[:, 2:].reshape(-1))
    # NextN row p drafts t_{p+1}; the trunk verifies it with its row p
    agree = (mtp[:, 1:].argmax(-1) == trunk[:, 1:].argmax(-1)).float().mean()
    return lt, lm, agree


@torch.no_grad()
def held_out_loss(model: GLM4MoE, data: torch.Tensor, seq: int) -> dict[str, float]:
    model.eval()
    n = (len(data) - 1) // seq
    tot = {"trunk": 0.0, "mtp": 0.0, "agree": 0.0}
    for i in range(0, n, 8):
        xs = torch.stack([data[j * seq: j * seq + seq + 1] for j in range(i, min(n, i + 8))])
        lt, lm, ag = losses(model, xs)
        w = xs.shape[0]
        tot["trunk"] += lt.item() * w
        tot["mtp"] += lm.item() * w
        tot["agree"] += ag.item() * w
    model.train()
    return {k: v / n for k, v in tot.items()}


def train(model: GLM4MoE, data: torch.Tensor, held: torch.Tensor, r: Recipe) -> list[dict]:
    g = torch.Generator().manual_seed(r.seed + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.95), eps=1e-8)
    steps = r.tokens // (r.batch * r.seq)
    history = []
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, r)
        starts = torch.randint(0, len(data) - r.seq - 1, (r.batch,), generator=g)
        x = torch.stack([data[s: s + r.seq + 1] for s in starts.tolist()])
        lt, lm, ag = losses(model, x)
        opt.zero_grad(set_to_none=True)
        (lt + r.mtp_weight * lm).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for moe in model.moe_layers():
            moe.balance(r.balance_rate)
        if step % 25 == 0 or step == steps - 1:
            rec = {"step": step, "trunk": round(lt.item(), 4), "mtp": round(lm.item(), 4),
                   "agree": round(ag.item(), 4), "s": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"step {step}/{steps} trunk {lt.item():.3f} mtp {lm.item():.3f} agree {ag.item():.3f} "
                f"({(step + 1) * r.batch * r.seq / (time.time() - t0):.0f} tok/s)")
    return history


def prompts_from(held_texts: list[str], n: int = 24, context_lines: int = 12) -> list[str]:
    """Held-out prompts: a function's preceding lines and its signature line, the body left to complete."""
    out = []
    for text in held_texts:
        lines = text.split("\n")
        defs = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("def ") and ln.rstrip().endswith(":")]
        for i in defs[:: max(1, len(defs) // 4)][:4]:
            out.append("\n".join(lines[max(0, i - context_lines): i + 1]) + "\n")
    return out[:n]


def evaluate(path: Path, held_texts: list[str], threads: int) -> dict:
    from mtpllama import SessionConfig, SpecConfig

    res: dict = {}
    with mtpllama.Model(str(path)) as m:
        res["round_trip"] = all(m.detokenize(m.tokenize(t)) == t for t in held_texts)
        res["held_out_tokens"] = sum(len(m.tokenize(t)) for t in held_texts)
        prompts = prompts_from(held_texts)
        acc = np.zeros(3)
        drafted = np.zeros(3)
        samples = []
        identical = True
        with m.session(SessionConfig(n_threads=threads), mtp=True) as s, \
                m.session(SessionConfig(n_threads=threads), mtp=False) as plain:
            for p in prompts:
                s.reset()
                plain.reset()
                r = s.generate(p, 96, spec=SpecConfig(draft_max=3, draft_p_min=0.0, adaptive=False))
                q = plain.generate(p, 96)
                identical &= r.tokens == q.tokens
                st = r.stats
                acc += np.array((st.accepted + [0, 0, 0])[:3], float)
                drafted += np.array((st.drafted + [0, 0, 0])[:3], float)
                if len(samples) < 3:
                    samples.append({"prompt": p, "completion": r.text})
        res["prompts"] = len(prompts)
        res["greedy_identical"] = bool(identical)
        res["acceptance"] = [round(float(a / d), 4) if d else None for a, d in zip(acc, drafted)]
        res["samples"] = samples
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tokens", type=int, default=Recipe.tokens, help="training tokens (default %(default)s)")
    ap.add_argument("--threads", type=int, default=Recipe.threads,
                    help="torch threads; results are bitwise reproducible for a fixed count (default %(default)s)")
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="re-run the evaluation of an existing --out file and update its manifest")
    args = ap.parse_args(argv)
    if args.evaluate_only:
        c = corpus_mod.load_corpus()
        manifest_path = args.out.with_suffix(".json")
        manifest = json.loads(manifest_path.read_text())
        if hashlib.sha256(args.out.read_bytes()).hexdigest() != manifest["sha256"]:
            raise SystemExit(f"{args.out} is not the file its manifest describes")
        manifest["evaluation"] = evaluate(args.out, [t for _, t in c.held_out], 1)
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        log(f"evaluation: {json.dumps({k: v for k, v in manifest['evaluation'].items() if k != 'samples'})}")
        return 0
    recipe = dataclasses.replace(Recipe(), tokens=args.tokens, threads=args.threads, seed=args.seed)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    c = corpus_mod.load_corpus()
    log(f"corpus: {len(c.train)} train files ({c.train_bytes} bytes), {len(c.held_out)} held out "
        f"({c.held_out_bytes} bytes), Python {c.python}, digest {c.digest[:16]}")
    tok = bpe.train([t for _, t in c.train], recipe.n_vocab)
    log(f"tokenizer: {tok.n_vocab} tokens, {len(tok.merges)} merges")
    with tempfile.TemporaryDirectory() as tmp:
        train_docs = llama_tokenize(tok, [t for _, t in c.train], Path(tmp))
        held_docs = llama_tokenize(tok, [t for _, t in c.held_out], Path(tmp))
    data, held = join(train_docs, tok.eos_id), join(held_docs, tok.eos_id)
    log(f"tokens: train {len(data)}, held out {len(held)} ({c.train_bytes / len(data):.2f} bytes/token)")

    shape = Shape(n_vocab=tok.n_vocab, n_ctx=recipe.seq)
    model = GLM4MoE(shape)
    n_params = sum(p.numel() for p in model.parameters())
    n_nextn = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith(("nextn.", "eh_proj", "enorm", "hnorm", "shared_head_norm")))
    log(f"model: {n_params} parameters ({n_nextn} in the NextN block)")
    t_train = time.time()
    history = train(model, data, held, recipe)
    t_train = time.time() - t_train
    ho = held_out_loss(model, held, recipe.seq)
    log(f"held out: trunk {ho['trunk']:.4f} nats/token, NextN {ho['mtp']:.4f}, arg-max agreement {ho['agree']:.4f}")

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    write_synthetic(tmp_out, spec_for(shape, "mtpllama-default-glm4moe-stdlib"), tok, model.gguf_tensors())
    os.replace(tmp_out, out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    log(f"wrote {out} ({out.stat().st_size} bytes, sha256 {sha[:16]})")

    ev = evaluate(out, [t for _, t in c.held_out], 1)
    log(f"evaluation: round trip {ev['round_trip']}, acceptance per position {ev['acceptance']}, "
        f"greedy MTP == plain: {ev['greedy_identical']}")
    manifest = {
        "file": out.name, "sha256": sha, "bytes": out.stat().st_size,
        "recipe": dataclasses.asdict(recipe), "shape": dataclasses.asdict(shape),
        "parameters": n_params, "nextn_parameters": n_nextn,
        "corpus": {"python": c.python, "digest": c.digest, "train_files": len(c.train), "train_bytes": c.train_bytes,
                   "held_out_files": [n for n, _ in c.held_out], "held_out_bytes": c.held_out_bytes,
                   "train_tokens": len(data), "held_out_tokens": len(held)},
        "tokenizer": {"n_vocab": tok.n_vocab, "merges": len(tok.merges)},
        "torch": torch.__version__, "train_seconds": round(t_train), "total_seconds": round(time.time() - t_start),
        "held_out_loss": {k: round(v, 4) for k, v in ho.items()}, "evaluation": ev, "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"done in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
