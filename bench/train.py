"""Training speed of rope_behavior.tasks.train() against a plain-PyTorch loop, side by side.

    python bench/train.py            # 300 steps x 3 rounds per candidate
    python bench/train.py --quick    # 40 steps x 2 rounds (smoke)

Same toy model (1 layer, 2 heads, d_head 32, seed 0), same task (Index, 16 + 1 tokens),
same batch size (128), AdamW lr 3e-3, on one torch thread (``--threads``). The plain
loop samples batches from the same generator, runs forward / cross-entropy at the query
position / backward / step and reads the loss each step, as ``train()`` does; early stop
is off, and both evaluate once at the end. Candidates run alternately; the median
steps/s of the rounds is printed with the ratio train()/plain (1.0 = no overhead).

Rows: ``all`` (no hooks) against the plain loop; ``nope`` (train() with the setting's
AngleOverride hooks) against the plain loop on a model whose ``rotary_omega`` is zeroed
(the same function without hooks); ``pair:0`` (FrequencyAblation hooks) against the plain
loop that zeroes the 15 other pairs' dims of W_Q/W_K/b_Q/b_K after every step.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rope_behavior.tasks import IndexTask, TrainConfig, evaluate, parse_setting, toy_model, train


def plain_loop(model, task, steps, batch_size, lr, seed, weight_mask=None):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    attn = model.blocks[0].attn
    def project() -> None:  # keep only the allowed pair's dims of W_Q / W_K (and biases)
        if weight_mask is not None:
            with torch.no_grad():
                for w in (attn.W_Q, attn.W_K, attn.b_Q, attn.b_K):
                    w.mul_(weight_mask)

    project()
    for _ in range(steps):
        batch = task.sample(batch_size, gen)
        logits = model(batch.tokens)
        loss = F.cross_entropy(logits[:, batch.query_position], batch.answer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        project()
        float(loss.detach())
    evaluate(model, task, 512, torch.Generator().manual_seed(seed + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (40 if args.quick else 300)
    rounds = args.rounds or (2 if args.quick else 3)
    task = IndexTask()
    config = TrainConfig(steps=steps, target_accuracy=None, eval_every=steps, progress=False)
    n_pairs = toy_model(task).cfg.n_pairs

    def run_train(setting_name):
        def go():
            model = toy_model(task, seed=0)
            train(model, task, config, fwd_hooks=parse_setting(setting_name, n_pairs).hooks)
        return go

    def run_plain(setting_name):
        def go():
            model = toy_model(task, seed=0)
            mask = None
            if setting_name == "nope":
                with torch.no_grad():
                    model.rotary_omega.zero_()
            elif setting_name.startswith("pair:"):
                p = int(setting_name[5:])
                mask = torch.zeros(model.cfg.d_head)
                mask[[p, p + n_pairs]] = 1.0
            plain_loop(model, task, steps, config.batch_size, config.lr, 0, mask)
        return go

    print(f"{steps} steps x {rounds} rounds, batch {config.batch_size}, "
          f"{torch.get_num_threads()} thread(s); median steps/s")
    print(f"{'setting':<8} {'train()':>9} {'plain':>9} {'ratio':>7}")
    for name in ("all", "nope", "pair:0"):
        fns = {"train": run_train(name), "plain": run_plain(name)}
        times = {k: [] for k in fns}
        for fn in fns.values():  # warm-up (allocator, autograd graph caches)
            fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        rate = {k: steps / statistics.median(v) for k, v in times.items()}
        print(f"{name:<8} {rate['train']:>9.1f} {rate['plain']:>9.1f} "
              f"{rate['train'] / rate['plain']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
