"""Trains the kjv-demo model: a small DeepSeek-V2-architecture LM on the King James Bible.

    /usr/bin/python3 scripts/train-demo/train.py --out models/kjv-demo --steps N

Steps: text (kjvdata.py) -> byte-level BPE (bpe.py) -> DeepSeek-V2 (model.py) trained with
AdamW on one CPU thread -> bf16 model.safetensors + config.json + tokenizer files ->
eval.json: the held-out perplexity of the exported bf16 weights, computed in float64.
Everything is seeded; one thread keeps it bit-reproducible on the same machine/torch build.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import kjvdata  # noqa: E402
import st  # noqa: E402
from model import DeepseekV2ForCausalLM  # noqa: E402

VOCAB = 4096
BOS_ID, EOS_ID = VOCAB - 2, VOCAB - 1


def make_config(seq):
    """config.json: every key of the published DeepSeek-V2 config.json, small sizes."""
    return {
        'architectures': ['DeepseekV2ForCausalLM'],
        'model_type': 'deepseek_v2',
        'vocab_size': VOCAB,
        'hidden_size': 256,
        'intermediate_size': 512,
        'moe_intermediate_size': 64,
        'num_hidden_layers': 4,
        'num_attention_heads': 4,
        'num_key_value_heads': 4,
        'n_shared_experts': 2,
        'n_routed_experts': 16,
        'ep_size': 1,
        'routed_scaling_factor': 2.0,
        'kv_lora_rank': 64,
        'q_lora_rank': 128,
        'qk_rope_head_dim': 16,
        'v_head_dim': 32,
        'qk_nope_head_dim': 32,
        'topk_method': 'group_limited_greedy',
        'n_group': 4,
        'topk_group': 2,
        'num_experts_per_tok': 4,
        'moe_layer_freq': 1,
        'first_k_dense_replace': 1,
        'norm_topk_prob': False,
        'scoring_func': 'softmax',
        'aux_loss_alpha': 0.01,
        'seq_aux': True,
        'hidden_act': 'silu',
        'max_position_embeddings': 4 * 512,
        'initializer_range': 0.02,
        'rms_norm_eps': 1e-6,
        'use_cache': True,
        'bos_token_id': BOS_ID,
        'eos_token_id': EOS_ID,
        'pretraining_tp': 1,
        'tie_word_embeddings': False,
        'rope_theta': 10000,
        'rope_scaling': {
            'type': 'yarn',
            'factor': 4,
            'original_max_position_embeddings': 512,
            'beta_fast': 32,
            'beta_slow': 1,
            'mscale': 0.707,
            'mscale_all_dim': 0.707,
        },
        'attention_bias': False,
        'attention_dropout': 0.0,
        'torch_dtype': 'bfloat16',
        'transformers_version': '4.39.3',
        'auto_map': {
            'AutoConfig': 'configuration_deepseek.DeepseekV2Config',
            'AutoModel': 'modeling_deepseek.DeepseekV2Model',
            'AutoModelForCausalLM': 'modeling_deepseek.DeepseekV2ForCausalLM',
        },
    }


class Log:
    def __init__(self, path):
        self.f = open(path, 'a') if path else None

    def __call__(self, *a):
        s = ' '.join(str(x) for x in a)
        print(s, flush=True)
        if self.f:
            self.f.write(s + '\n')
            self.f.flush()


@torch.no_grad()
def evaluate(model, ids, context, dtype=torch.float64, max_windows=None):
    """Non-overlapping windows of `context` tokens of `ids` (the last one may be shorter), no
    BOS added; each window scores its tokens 1..len-1 given the tokens before it in the window.
    Returns (scored tokens, mean nll)."""
    was = model.training
    model.eval()
    model.to(dtype)
    total, n = 0.0, 0
    starts = list(range(0, len(ids), context))
    if max_windows is not None:
        starts = starts[:max_windows]
    for s in starts:
        w = ids[s:s + context]
        if len(w) < 2:
            continue
        x = torch.tensor([w])
        logits = model(x)[0, :-1].to(dtype)
        lp = torch.log_softmax(logits, dim=-1)
        tgt = torch.tensor(w[1:])
        total += -lp.gather(1, tgt[:, None]).sum().item()
        n += len(w) - 1
    model.to(torch.float32)
    model.train(was)
    return n, total / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='models/kjv-demo')
    ap.add_argument('--steps', type=int, default=1000)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--seq', type=int, default=256, help='training window and evaluation context')
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--warmup', type=int, default=100)
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--ids-out', default='/tmp/kjv-demo-heldout-ids.json', help='Python ids of heldout.txt (check_tokenizer.js)')
    ap.add_argument('--log', default=None, help='append the log here too')
    ap.add_argument('--log-every', type=int, default=25)
    ap.add_argument('--eval-every', type=int, default=500)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    log = Log(args.log)
    t_start = time.time()
    log(f'# train.py {" ".join(sys.argv[1:])}  (torch {torch.__version__}, threads {torch.get_num_threads()})')
    os.makedirs(args.out, exist_ok=True)

    # ---- data + tokenizer ----------------------------------------------------------------
    train_texts, held_texts = kjvdata.split()
    held_text = ''.join(held_texts)
    log(f'data: {len(train_texts)} training chapters ({sum(map(len, train_texts))} chars), '
        f'{len(held_texts)} held-out chapters ({len(held_text)} chars; chapter index % 20 == 19)')
    vocab, merges = bpe.train(train_texts, VOCAB, n_special=2, log=log)
    specials = {bpe.BOS: BOS_ID, bpe.EOS: EOS_ID}
    assert len(vocab) == VOCAB - 2
    enc = bpe.Encoder(vocab, merges, specials)
    bpe.save(args.out, vocab, merges, specials, model_max_length=args.seq * 8)
    with open(os.path.join(args.out, 'heldout.txt'), 'w') as f:
        f.write(held_text)
    stream = []
    for t in train_texts:  # each chapter: BOS + its tokens
        stream.append(BOS_ID)
        stream.extend(enc.encode(t))
    held_ids = enc.encode(held_text)
    assert enc.decode(held_ids) == held_text
    with open(args.ids_out, 'w') as f:  # for check_tokenizer.js
        json.dump({'lines': [enc.encode(l) for l in held_text.split('\n')], 'whole': held_ids}, f)
    log(f'tokenizer: {len(merges)} merges; training stream {len(stream)} tokens, held-out {len(held_ids)} tokens')
    data = torch.tensor(stream, dtype=torch.long)

    # ---- model ---------------------------------------------------------------------------
    cfg = make_config(args.seq)
    model = DeepseekV2ForCausalLM(cfg)
    model.init_weights(cfg['initializer_range'])
    n_params = sum(p.numel() for p in model.parameters())
    sd = model.hf_state_dict()
    log(f'model: {n_params} parameters ({len(sd)} tensors, {2 * n_params / 1e6:.2f} MB in bf16)')
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    gen = torch.Generator().manual_seed(args.seed)
    n_win = len(data) - (args.seq + 1)
    model.train()
    t0 = time.time()
    ema = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g['lr'] = lr_at(step)
        starts = torch.randint(0, n_win, (args.batch,), generator=gen)
        batch = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()])
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        aux = sum(a.item() for a in model.aux_losses())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # the aux losses enter through AddAuxiliaryLoss, as in the HF code
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t0
            tps = (step + 1) * args.batch * args.seq / el
            loads = [l.mlp.last_counts for l in model.layers if hasattr(l.mlp, 'last_counts')]
            imb = max(max(c) / (sum(c) / len(c)) for c in loads)
            log(f'step {step:5d}  loss {loss.item():.4f}  ema {ema:.4f}  aux {aux:.4f}  max-load/mean {imb:.2f}  '
                f'lr {lr_at(step):.2e}  {el:7.1f}s  {tps:.0f} tok/s')
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            n, nll = evaluate(model, held_ids, args.seq, dtype=torch.float32, max_windows=40)
            log(f'step {step:5d}  held-out (first 40 windows, f32) nll {nll:.4f}  ppl {math.exp(nll):.2f}')
    train_time = time.time() - t0
    log(f'training: {args.steps} steps x {args.batch} x {args.seq} tokens in {train_time:.0f}s; final loss ema {ema:.4f}')

    # ---- export (bf16) -------------------------------------------------------------------
    tensors = {k: v.detach() for k, v in model.hf_state_dict().items()}
    st.write(os.path.join(args.out, 'model.safetensors'), tensors, metadata={'format': 'pt'})
    with open(os.path.join(args.out, 'config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)
        f.write('\n')

    # ---- evaluate THE EXPORTED weights (bf16 -> float64) ---------------------------------
    ev = DeepseekV2ForCausalLM(cfg)
    ev.load_hf_state_dict(st.read(os.path.join(args.out, 'model.safetensors')))
    t1 = time.time()
    n, nll = evaluate(ev, held_ids, args.seq, dtype=torch.float64)
    log(f'held-out (exported bf16 weights, float64): {n} scored tokens, nll {nll:.5f}, perplexity {math.exp(nll):.3f} '
        f'({time.time() - t1:.0f}s)')
    result = {
        'file': 'heldout.txt',
        'tokens': n,
        'text_tokens': len(held_ids),
        'nll': nll,
        'perplexity': math.exp(nll),
        'context': args.seq,
        'windows': (f'tokens = tokenizer.encode(heldout.txt) with NO special tokens (no BOS) = {len(held_ids)} tokens; '
                    f'split into consecutive non-overlapping windows ids[{args.seq}*i : {args.seq}*(i+1)] (the last '
                    f'one shorter: {len(held_ids) % args.seq} tokens); no BOS prepended; each window is run from '
                    f'position 0 with a fresh cache and scores every token after its first (positions 1..len-1) '
                    f'given the tokens before it in the same window; nll = mean natural-log loss over all '
                    f'scored tokens; perplexity = exp(nll)'),
        'bos_prepended': False,
        'weights': 'model.safetensors as stored (bf16), computed in float64',
        'train_steps': args.steps,
        'train_loss_ema': ema,
        'train_seconds': round(train_time),
        'parameters': n_params,
    }
    with open(os.path.join(args.out, 'eval.json'), 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')
    log(f'total wall time {time.time() - t_start:.0f}s')


if __name__ == '__main__':
    main()
