"""Train the small rotary language model shipped in ``rope_behavior/lm``.

    python scripts/train_lm.py                 # train (CPU, ~23 min on one core), measure, save
    python scripts/train_lm.py --measure       # re-measure the shipped folder, print the table
    python scripts/train_lm.py --device cuda   # the larger GPU variant (see below)
    python scripts/train_lm.py --track-every 50 --track-dir runs/lm_tracking
                                               # also score every head every 50 steps

The model is a ``transformers.LlamaForCausalLM`` (RoPE, grouped-query attention, RMSNorm,
SwiGLU), trained from scratch on a corpus every machine with Python has: the source files
of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``, the
``*.py`` files outside test suites (``test/``, ``tests/``, ``idle_test/``) and
``site-packages/``, about 12 MB). Files are split by a hash of their relative path: 5% are
held out for validation and never seen by the tokenizer or the model during training.

Tokenizer: a byte-level BPE (``tokenizers``) trained on the training split, saved as a
Hugging Face tokenizer whose post-processor prepends ``<|bos|>``, so
``TransformerBridge.to_tokens`` starts every prompt with BOS. Every training sequence
starts with BOS too (then ``context - 1`` tokens of the concatenated training files, at a
random offset; files are separated by ``<|eos|>``).

Repetition that only content can find. What was tried, 3 layers, ~1,300-1,500 steps on
one CPU thread each (the numbers are the measured induction / previous-token maxima):
plain text grew a previous-token head (0.54) but no induction head (<= 0.01); sequences
repeating their first half at a fixed offset taught a positional look-back by that
offset; one copied span per sequence (8-48 tokens, from a random earlier place to a random
later one), even with half the rows uniformly random tokens carrying three such spans,
grew a previous-token head (0.86) and no induction head (<= 0.01); half the rows periodic
(below) from the first step, at lr 3e-3, grew none either (0.03), and the periodic rows'
loss stayed at the unigram entropy. What grows one within the CPU budget is a curriculum:
for the first ``--periodic-warmup`` steps (600) most rows are periodic
(``--periodic-warmup-rows``), afterwards half of them (``--periodic-rows``), at lr 2e-3.
A periodic row is ``p`` tokens drawn from the training stream (unigram frequencies, so
the tokens are ones the model knows) repeated to fill the row, ``p`` uniform in
``period_min..period_max`` (4-32), so the look-back distance differs from row to row and
only content says where the previous occurrence is; the other rows are natural text,
``--copy-prob`` of them with one copied span.

Tuning the curriculum (previous-token as TransformerLens's ``head_detector`` scores it,
then with ``exclude_bos=True``; all grew four induction heads in layer 1): warmup rows all
periodic, weight decay 0.1: 1.772 bits/byte, induction <= 0.43, previous-token 0.42;
three quarters periodic (a quarter natural text from the start): 1.608, induction <= 0.55,
previous-token 0.47; all periodic with 8 heads (4 KV): 1.732, 0.40, 0.44, 28.5 min;
60% periodic: 1.556, 0.43, 0.42 (0.49), weaker content heads (s_SYM <= 0.76); three
quarters and 4 layers: 1.639, 0.49, 0.49 (0.58); three quarters without weight decay
(shipped): 1.623, induction <= 0.56, previous-token 0.46 (0.57); the same with 4 layers:
1.651, 0.49, 0.47 (0.58). The layer-0 previous-token heads park about a fifth of their
attention on BOS (an attention sink); in the 4-layer runs the largest previous-token
score reached 0.56-0.61 at steps 500-1000 (the training monitor's 32 windows) and fell
back to 0.47-0.49 by the end.

Scores over training: ``--track-every N`` scores every head (positional / symbolic scores
with intervals, frequency usage) at step 0 and every N steps on ``--track-prompts`` (32)
held-out windows with ``rope_behavior.tracking.Tracker``, appending tidy rows to
``--track-dir`` (a rerun with the same settings skips the steps stored there); it does not
change the trained weights (bench/tracker.py measures what a checkpoint costs).

Determinism: ``torch.manual_seed(seed)`` for the initialisation, a seeded
``torch.Generator`` for the data order and the copies, ``torch.use_deterministic_algorithms``
and a fixed thread count (``--threads``, default 1: on a shared 2-core machine one thread
was faster than two). The same Python version (same stdlib), torch build and thread
count give the same weights.

Measured and written to ``rope_behavior_lm.json`` (``--measure`` recomputes it from the
folder, loaded with ``rope_behavior.load_lm_folder``, i.e. through
``TransformerBridge.boot_transformers``): validation bits per byte on the held-out split;
per head, the previous-token score (mean attention on key ``n - 1``, rows ``n >= 1``) and
the induction score (on ``BOS + r + r`` with ``r`` random tokens, mean attention from the
second copy's token to the token after its first occurrence; the rows where
TransformerLens's ``head_detector`` induction pattern has its ones), both on held-out /
seeded inputs; ``score_heads`` with its defaults on held-out prompts, summarised with
bootstrap intervals; and ``behavior_frequency_correspondence`` against
``frequency_usage(capture(model, tokens))`` on the same prompts.

GPU variant: ``--device cuda`` switches the defaults to a larger model (4 layers, d_model
256, 8 heads of 32, context 256, vocabulary 4096, batch 64, 6000 steps) written by default
to ``lm_gpu/`` beside the repository (it exceeds the package's 10 MB budget; pass ``--out``
to choose). It has not been run: no GPU machine was available when the shipped model was
trained.
"""

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_measure

from rope_behavior.data.heldout import EXCLUDED_DIRS, VAL_PERCENT, corpus_split, stdlib_root

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "rope_behavior" / "lm"
INFO_FILE = "rope_behavior_lm.json"
FORMAT = "rope_behavior_lm/1"
SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")  # ids 0, 1, 2
BOS, EOS, PAD = 0, 1, 2


@dataclass(frozen=True)
class Config:
    """Everything that determines the trained weights (recorded in the JSON)."""

    seed: int = 0
    vocab_size: int = 2048
    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    d_head: int = 32
    d_mlp: int = 384
    context: int = 128
    rope_theta: float = 10000.0
    attention_bias: bool = False
    init_std: float = 0.02
    batch_size: int = 32
    steps: int = 1500
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    copy_spans: int = 1
    copy_prob: float = 0.5
    copy_min: int = 8
    copy_max: int = 48
    random_span_prob: float = 0.0
    random_rows: float = 0.0
    periodic_rows: float = 0.5
    periodic_warmup: int = 600
    periodic_warmup_rows: float = 0.75
    period_min: int = 4
    period_max: int = 32
    threads: int = 1


GPU_DEFAULTS = dict(
    vocab_size=4096,
    n_layers=4,
    d_model=256,
    n_heads=8,
    n_kv_heads=4,
    d_mlp=768,
    batch_size=64,
    steps=6000,
    lr=2e-3,
)


# ---------------------------------------------------------------------------- corpus


# stdlib_root / corpus_split live in the package: analyze's built-in prompts are the same
# held-out files.


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[BOS]} $A", special_tokens=[(SPECIALS[BOS], BOS)]
    )
    return tok


def hf_tokenizer(tok: Any, context: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS[BOS],
        eos_token=SPECIALS[EOS],
        pad_token=SPECIALS[PAD],
        model_max_length=context,
    )


def encode_stream(tok: Any, texts: list[str]) -> torch.Tensor:
    """The files' tokens, each file followed by ``<|eos|>``, as one int64 stream."""
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


def token_bytes(tok: Any, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token stands for (byte-level BPE: one vocabulary character per
    byte; special tokens stand for no text)."""
    n = torch.zeros(vocab_size, dtype=torch.long)
    for piece, i in tok.get_vocab().items():
        n[i] = 0 if piece in SPECIALS else len(piece)
    return n


# ------------------------------------------------------------------------------ data


def batch(
    stream: torch.Tensor, cfg: Config, gen: torch.Generator, periodic_rows: float | None = None
) -> torch.Tensor:
    """``[batch, context]``: BOS + a random window of the stream; some rows get copied
    spans, some are replaced by random tokens, some by a periodic sequence (module
    docstring)."""
    n = cfg.context - 1
    starts = torch.randint(0, stream.numel() - n, (cfg.batch_size,), generator=gen)
    rows = torch.stack([stream[s : s + n] for s in starts.tolist()])
    x = torch.cat([torch.full((cfg.batch_size, 1), BOS), rows], 1)
    rand_row = torch.rand(cfg.batch_size, generator=gen) < cfg.random_rows
    noise = torch.randint(len(SPECIALS), cfg.vocab_size, (cfg.batch_size, n), generator=gen)
    x[:, 1:] = torch.where(rand_row[:, None], noise, x[:, 1:])  # rows of random tokens
    coin = torch.rand(cfg.batch_size, cfg.copy_spans, 2, generator=gen)
    for r in range(cfg.batch_size):
        for k in range(cfg.copy_spans):
            if coin[r, k, 0] >= cfg.copy_prob:
                continue
            length = int(torch.randint(cfg.copy_min, cfg.copy_max + 1, (1,), generator=gen))
            src = int(torch.randint(1, cfg.context - 2 * length + 1, (1,), generator=gen))
            dst = int(torch.randint(src + length, cfg.context - length + 1, (1,), generator=gen))
            if coin[r, k, 1] < cfg.random_span_prob:  # random tokens: only copying predicts them
                x[r, src : src + length] = torch.randint(
                    len(SPECIALS), cfg.vocab_size, (length,), generator=gen
                )
            x[r, dst : dst + length] = x[r, src : src + length].clone()
    share = cfg.periodic_rows if periodic_rows is None else periodic_rows
    periodic = torch.rand(cfg.batch_size, generator=gen) < share
    for r in periodic.nonzero().flatten().tolist():  # a random sequence, repeated
        p = int(torch.randint(cfg.period_min, cfg.period_max + 1, (1,), generator=gen))
        seq = stream[torch.randint(0, stream.numel(), (p,), generator=gen)]  # unigram draws
        x[r, 1:] = seq.repeat(n // p + 1)[:n]
    return x


# ----------------------------------------------------------------------------- model


def build_model(cfg: Config) -> Any:
    import transformers

    hf = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        max_position_embeddings=cfg.context,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=cfg.attention_bias,
        initializer_range=cfg.init_std,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        attn_implementation="eager",
    )
    torch.manual_seed(cfg.seed)
    return transformers.LlamaForCausalLM(hf)


def lr_at(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(
    cfg: Config,
    device: str,
    out: Path,
    log_every: int,
    eval_every: int,
    track: tuple[int, Path, int] | None = None,
) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    train_files, val_files = corpus_split(stdlib_root())
    tok = train_tokenizer([t for _, t in train_files], cfg.vocab_size)
    train_stream = encode_stream(tok, [t for _, t in train_files])
    val_stream = encode_stream(tok, [t for _, t in val_files])
    nbytes = token_bytes(tok, cfg.vocab_size)
    corpus = {
        "source": f"Python {platform.python_version()} standard library (*.py)",
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "split": f"by file: sha256(relative path) % 100 < {VAL_PERCENT} is held out",
        "train_files": len(train_files),
        "val_files": len(val_files),
        "train_bytes": sum(len(t.encode()) for _, t in train_files),
        "val_bytes": sum(len(t.encode()) for _, t in val_files),
        "train_tokens": train_stream.numel(),
        "val_tokens": val_stream.numel(),
    }
    print(f"corpus: {json.dumps(corpus)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    model = build_model(cfg).to(device)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    monitor = lm_measure.eval_windows(val_stream, cfg.context, limit=32)
    tracker = None
    if track is not None:  # (every, folder, prompts): scores over training
        from rope_behavior.tracking import Tracker

        every, folder, n_prompts = track
        prompts = lm_measure.held_out_prompts(val_stream, cfg.context, n_prompts)
        # every window is BOS + text (BOS nowhere else): key 0 is left out of the rows, as
        # exclude_keys="auto" does for the saved model (TransformerLens reloads a tokenizer
        # from its folder, which this in-memory one does not have)
        tracker = Tracker(prompts, every=every, out_dir=folder, exclude_keys=(0,))
        tracker.step(model, 0)
    t_train = time.perf_counter()
    history = []
    for step in range(cfg.steps):
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        warm = step < cfg.periodic_warmup  # a curriculum: (mostly) periodic rows, at first
        x = batch(train_stream, cfg, gen, cfg.periodic_warmup_rows if warm else None).to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        if tracker is not None:
            tracker.step(model, done, metrics={"loss": loss.item()}, final=done == cfg.steps)
        if done % log_every == 0 or done == cfg.steps:
            el = time.perf_counter() - t_train
            tps = done * cfg.batch_size * cfg.context / el
            print(
                f"step {done}/{cfg.steps} loss {loss.item():.3f} lr {lr_at(step, cfg):.2e} "
                f"{el / 60:.1f} min ({tps:.0f} tok/s)",
                flush=True,
            )
        if done % eval_every == 0 or done == cfg.steps:
            model.eval()
            quick = lm_measure.quick_scores(model, monitor, nbytes, cfg.vocab_size, device)
            history.append({"step": done, "minutes": (time.perf_counter() - t_train) / 60, **quick})
            print(
                f"  eval @ {done}: " + json.dumps({k: round(v, 4) for k, v in quick.items()}),
                flush=True,
            )
    train_seconds = time.perf_counter() - t_train
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hf_tokenizer(tok, cfg.context).save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    tok_cfg = out / "tokenizer_config.json"  # the class name transformers 4 and 5 both know
    tok_cfg.write_text(
        json.dumps(
            {**json.loads(tok_cfg.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"},
            indent=2,
        )
        + "\n"
    )
    for path in out.iterdir():  # safetensors writes owner-only files
        path.chmod(0o644)
    training = {
        "config": asdict(cfg),
        "device": device,
        "architecture": "LlamaForCausalLM (RoPE, GQA, RMSNorm, SwiGLU; tied embeddings)",
        "optimizer": "AdamW betas (0.9, 0.95), linear warmup then cosine to min_lr_ratio * lr, "
        "weight_decay on matrices only, gradient clipping",
        "copies": "per sequence, copy_spans times with probability copy_prob: a span of "
        "copy_min..copy_max tokens (first replaced by uniformly random tokens with probability "
        "random_span_prob) copied from a random earlier position to a random later one; a "
        "share random_rows of the rows are uniformly random tokens before the copies; a "
        "share periodic_rows (periodic_warmup_rows in the first periodic_warmup steps) are "
        "replaced by p tokens drawn from the training stream (unigram "
        "frequencies), p uniform in period_min..period_max, repeated to fill the row",
        "corpus": corpus,
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.context,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "command": _command(cfg, device),
    }
    info = {"format": FORMAT, "training": training}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    print(f"trained in {train_seconds / 60:.1f} min; saved to {out}", flush=True)
    return info


def measure_folder(out: Path, device: str, n_prompts: int) -> dict[str, Any]:
    """Measure the saved folder (loaded as users load it) and write the results into its
    JSON; returns the JSON."""
    info = json.loads((out / INFO_FILE).read_text())
    cfg = Config(**info["training"]["config"])
    torch.set_num_threads(cfg.threads)
    _, val_files = corpus_split(stdlib_root())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    val_stream = encode_stream(tok, [t for _, t in val_files])
    nbytes = token_bytes(tok, cfg.vocab_size)
    measured = lm_measure.measure(out, val_stream, nbytes, cfg, device, n_prompts)
    measured["weights_sha256"] = hashlib.sha256(
        (out / "model.safetensors").read_bytes()
    ).hexdigest()
    info["measured"] = measured
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def _command(cfg: Config, device: str) -> str:
    """The command that retrains these weights: the settings that differ from the
    defaults (the output folder and the logging cadence do not change them)."""
    base = replace(Config(), **(GPU_DEFAULTS if device.startswith("cuda") else {}))
    flags = [
        f"--{k.replace('_', '-')} {v}" for k, v in asdict(cfg).items() if getattr(base, k) != v
    ]
    return " ".join(
        ["python scripts/train_lm.py", *flags, *(["--device", device] if device != "cpu" else [])]
    )


def _yes_no(text: str) -> bool:
    if text.lower() not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected yes or no")
    return text.lower() in ("yes", "true", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="re-measure --out, print the table")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default {SHIPPED})")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: the larger variant")
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts for the scores")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--track-every", type=int, default=0, help="score heads every N steps")
    ap.add_argument("--track-dir", type=Path, default=REPO / "runs" / "lm_tracking")
    ap.add_argument("--track-prompts", type=int, default=32, help="held-out prompts scored")
    for f in Config.__dataclass_fields__.values():
        kind = _yes_no if isinstance(f.default, bool) else type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    out = args.out or (REPO.parent / "lm_gpu" if gpu and not args.measure else SHIPPED)
    if not args.measure:
        cfg = replace(Config(), **(GPU_DEFAULTS if gpu else {}))
        given = {
            k: v
            for k, v in vars(args).items()
            if k in Config.__dataclass_fields__ and v is not None
        }
        cfg = replace(cfg, **given)
        track = (args.track_every, args.track_dir, args.track_prompts) if args.track_every else None
        train(cfg, args.device, out, args.log_every, args.eval_every, track)
    info = measure_folder(out, args.device, args.prompts)
    print(lm_measure.markdown_table(info))


if __name__ == "__main__":
    main()
