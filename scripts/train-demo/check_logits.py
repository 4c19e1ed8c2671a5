"""Compares the project's runtime (`dsv2 logits`) with this directory's torch DeepSeek-V2 on the
exported bf16 weights:

    /usr/bin/python3 scripts/train-demo/check_logits.py [--model models/kjv-demo] [--n 96]

Tokens: BOS + the first n-1 tokens of heldout.txt. Prints, per runtime setting, the largest
|logit difference| relative to the largest |logit| of the torch float64 forward, the mean
relative difference, the per-position log-softmax difference and top-1 agreement.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from model import DeepseekV2ForCausalLM  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))


def torch_logits(model_dir, ids, dtype):
    cfg = json.load(open(os.path.join(model_dir, 'config.json')))
    m = DeepseekV2ForCausalLM(cfg)
    m.load_hf_state_dict(st.read(os.path.join(model_dir, 'model.safetensors')))
    m.eval()
    m.to(dtype)
    with torch.no_grad():
        return m(torch.tensor([ids]))[0].to(torch.float64)


def runtime_logits(model_dir, ids, extra):
    cmd = ['node', os.path.join(ROOT, 'dist/lib/cli/main.js'), 'logits', '--model', model_dir,
           '--tokens', ','.join(map(str, ids)), '--json'] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return torch.tensor(json.loads(out)['logits'], dtype=torch.float64)


def compare(name, ref, got):
    d = (got - ref).abs()
    scale = ref.abs().max().item()
    lp = torch.log_softmax(got, -1) - torch.log_softmax(ref, -1)
    top1 = (got.argmax(-1) == ref.argmax(-1)).double().mean().item()
    row_rel = (d.max(-1).values / ref.abs().max(-1).values)
    r = {'max_abs': d.max().item(), 'max_rel_to_max_logit': d.max().item() / scale, 'worst_row_rel': row_rel.max().item(),
         'mean_abs': d.mean().item(), 'max_logprob_diff': lp.abs().max().item(), 'top1_agree': top1}
    print(f'{name:38s} max|d| {r["max_abs"]:.3e}  max|d|/max|ref| {r["max_rel_to_max_logit"]:.2e}  '
          f'worst row {r["worst_row_rel"]:.2e}  mean|d| {r["mean_abs"]:.2e}  max|dlogp| {r["max_logprob_diff"]:.2e}  '
          f'top1 {top1 * 100:.1f}%')
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default=os.path.join(ROOT, 'models/kjv-demo'))
    ap.add_argument('--n', type=int, default=96)
    ap.add_argument('--gen', type=int, default=40)
    ap.add_argument('--ppl-windows', type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = json.load(open(os.path.join(args.model, 'config.json')))
    if True:
        import bpe
        tj = json.load(open(os.path.join(args.model, 'tokenizer.json')))
        vocab = {k: v for k, v in tj['model']['vocab'].items() if v < cfg['bos_token_id']}
        merges = [tuple(m.split(' ')) for m in tj['model']['merges']]
        held = bpe.Encoder(vocab, merges, {}).encode(open(os.path.join(args.model, 'heldout.txt')).read()[:4000])
    ids = [cfg['bos_token_id']] + held[:args.n - 1]
    ref = torch_logits(args.model, ids, torch.float64)
    res = {'tokens': len(ids)}
    res['torch_f32_vs_f64'] = compare('torch f32 vs torch f64', ref, torch_logits(args.model, ids, torch.float32))
    for name, extra in [('runtime prefill kv f32', ['--kv-cache', 'f32', '--device', 'cpu']),
                        ('runtime decode kv f32', ['--kv-cache', 'f32', '--mode', 'decode', '--device', 'cpu']),
                        ('runtime prefill kv bf16 (default)', ['--device', 'cpu']),
                        ('runtime decode kv bf16 (default)', ['--mode', 'decode', '--device', 'cpu'])]:
        try:
            res[name] = compare(name, ref, runtime_logits(args.model, ids, extra))
        except subprocess.CalledProcessError as e:
            print(f'{name}: FAILED: {e.stderr[-2000:]}')
            res[name] = 'failed'
    # Greedy generation: torch (float64, full recompute each step) vs `dsv2 generate --json`.
    from check_tokenizer import encoder_from_json
    enc = encoder_from_json(args.model)
    prompt = 'And God said'
    ptoks = [cfg['bos_token_id']] + enc.encode(prompt)
    m = DeepseekV2ForCausalLM(cfg)
    m.load_hf_state_dict(st.read(os.path.join(args.model, 'model.safetensors')))
    m.eval()
    m.to(torch.float64)
    toks = list(ptoks)
    with torch.no_grad():
        for _ in range(args.gen):
            nxt = int(m(torch.tensor([toks]))[0, -1].argmax())
            toks.append(nxt)
            if nxt == cfg['eos_token_id']:
                break
    mine = toks[len(ptoks):]
    print(f'torch greedy ({args.gen} tokens): {json.dumps(prompt + enc.decode(mine))}')
    for extra in [['--kv-cache', 'f32'], []]:
        cmd = ['node', os.path.join(ROOT, 'dist/lib/cli/main.js'), 'generate', '--model', args.model, '--prompt', prompt,
               '--max-new-tokens', str(args.gen), '--json', '--device', 'cpu'] + extra
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        same = out['tokens'] == mine
        print(f'runtime greedy {" ".join(extra) or "(default kv bf16)"}: {"identical tokens" if same else "DIFFERENT tokens"}: '
              f'{json.dumps(out["text"])}')
        if not same:
            print('  torch  ', mine)
            print('  runtime', out['tokens'])
        res['generate ' + (' '.join(extra) or 'default')] = {'identical': same, 'text': out['text']}
    # eval.json's definition on the first --ppl-windows windows: torch f64 vs the runtime's logits.
    if args.ppl_windows:
        all_ids = enc.encode(open(os.path.join(args.model, 'heldout.txt'), encoding='utf-8').read())
        C = json.load(open(os.path.join(args.model, 'eval.json')))['context']
        tot = {'torch f64': 0.0, 'runtime kv f32': 0.0, 'runtime kv bf16': 0.0}
        n = 0
        for i in range(args.ppl_windows):
            w = all_ids[i * C:(i + 1) * C]
            tgt = torch.tensor(w[1:])
            for name, lg in [('torch f64', torch_logits(args.model, w, torch.float64)),
                             ('runtime kv f32', runtime_logits(args.model, w, ['--kv-cache', 'f32', '--device', 'cpu'])),
                             ('runtime kv bf16', runtime_logits(args.model, w, ['--device', 'cpu']))]:
                tot[name] += -torch.log_softmax(lg[:-1], -1).gather(1, tgt[:, None]).sum().item()
            n += len(w) - 1
        for name, v in tot.items():
            print(f'first {args.ppl_windows} windows ({n} scored tokens), {name:16s}: nll {v / n:.6f}  '
                  f'ppl {math.exp(v / n):.4f}  ({(math.exp(v / n) / math.exp(tot["torch f64"] / n) - 1) * 100:+.3f}%)')
        res['ppl_windows'] = {k: v / n for k, v in tot.items()}
    print(json.dumps(res))


if __name__ == '__main__':
    main()
