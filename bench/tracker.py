"""What the training tracker costs per checkpoint, relative to training steps of
scripts/train_lm.py, measured side by side in one run.

    python bench/tracker.py                 # 100 training steps, a checkpoint every 25
    python bench/tracker.py --steps 40      # shorter (the ratio is per 100 steps anyway)
    python bench/tracker.py --quick         # a smoke run

The training step is scripts/train_lm.py's loop body (its Config defaults: batch 32 x 128
tokens, AdamW, gradient clipping, one thread, deterministic algorithms) on the shipped LM's
architecture, started from the shipped weights (a step costs the same from any weights),
on windows of the training split encoded with the shipped tokenizer. The checkpoint is
what ``--track-every`` runs: ``Tracker.step`` on the training (plain Hugging Face) model
with 32 held-out prompts of 128 tokens (scores with intervals, 64 swaps, 200 bootstrap
draws, frequency usage), its mirror bridge's weights synced first. Checkpoints and
training chunks alternate; printed: the one-off mirror build, each checkpoint, the
training time per 100 steps and the ratio median checkpoint / 100 training steps (the
issue's target: <= 0.20).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import lm_measure  # noqa: E402
import train_lm  # noqa: E402

from rope_behavior.data.heldout import corpus_split, stdlib_root  # noqa: E402
from rope_behavior.data.shipped_lm import shipped_lm_path  # noqa: E402
from rope_behavior.tracking import Tracker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps timed")
    ap.add_argument("--every", type=int, default=25, help="a checkpoint every N steps")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--files", type=int, default=300, help="training files encoded")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 6 steps, 8 prompts")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.every, args.prompts, args.files = 6, 3, 8, 20
    import transformers
    from tokenizers import Tokenizer

    cfg = train_lm.Config()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    folder = shipped_lm_path()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    train_files, val_files = corpus_split(stdlib_root())
    stream = train_lm.encode_stream(tok, [t for _, t in train_files[: args.files]])
    val_stream = train_lm.encode_stream(tok, [t for _, t in val_files])
    prompts = lm_measure.held_out_prompts(val_stream, cfg.context, args.prompts)
    model = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1)

    def train_steps(first: int, n: int) -> float:
        t0 = time.perf_counter()
        for step in range(first, first + n):  # scripts/train_lm.py's loop body
            model.train()
            for g in opt.param_groups:
                g["lr"] = train_lm.lr_at(step, cfg)
            x = train_lm.batch(stream, cfg, gen)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as out:
        tracker = Tracker(prompts, every=args.every, out_dir=out, exclude_keys=(0,))  # as train_lm
        t0 = time.perf_counter()
        tracker.step(model, 0)  # builds the mirror bridge (once per run), then scores
        first = time.perf_counter() - t0
        train_steps(0, 2)  # warm-up of the training step
        train_s, marks = 0.0, []
        for lo in range(0, args.steps, args.every):
            n = min(args.every, args.steps - lo)
            train_s += train_steps(lo, n)
            t0 = time.perf_counter()
            rows = tracker.step(model, lo + n, final=lo + n == args.steps)
            marks.append(time.perf_counter() - t0)
            assert rows is not None, "the checkpoint was not scored"
        frame = tracker.trajectory().heads
    per100 = train_s / args.steps * 100
    ckpt = statistics.median(marks)
    print(
        f"shipped LM, {args.prompts} prompts x {cfg.context} tokens, {torch.get_num_threads()} thread(s)"
    )
    print(f"first checkpoint (builds the mirror bridge): {first:.2f} s")
    print("checkpoints: " + ", ".join(f"{m:.2f}" for m in marks) + " s")
    print(
        f"training: {train_s / args.steps:.3f} s/step ({args.steps} steps) -> {per100:.1f} s per 100 steps"
    )
    print(f"rows per checkpoint: {len(frame) // (len(marks) + 1)} heads")
    print(f"ratio checkpoint / 100 training steps = {ckpt / per100:.3f} (target <= 0.20)")


if __name__ == "__main__":
    main()
