"""Checks that the Python BPE encoder (bpe.py, built from the model's tokenizer.json) and the JS
library the project uses (@huggingface/tokenizers, via check_tokenizer.js) give identical ids
and round-trip, on heldout.txt (every line, and the whole file) and on the first 3000 verse
lines of the training text:

    /usr/bin/python3 scripts/train-demo/check_tokenizer.py [--model models/kjv-demo]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpe  # noqa: E402
import kjvdata  # noqa: E402


def encoder_from_json(model_dir):
    tj = json.load(open(os.path.join(model_dir, 'tokenizer.json'), encoding='utf-8'))
    specials = {a['content']: a['id'] for a in tj['added_tokens']}
    vocab = {k: v for k, v in tj['model']['vocab'].items() if k not in specials}
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in tj['model']['merges']]
    return bpe.Encoder(vocab, merges, specials)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default=os.path.join(HERE, '..', '..', 'models', 'kjv-demo'))
    args = ap.parse_args()
    enc = encoder_from_json(args.model)
    held = open(os.path.join(args.model, 'heldout.txt'), encoding='utf-8').read()
    train, _ = kjvdata.split()
    train_lines = ''.join(train).split('\n')[:3000]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in [('heldout.txt', held), ('3000 training lines', '\n'.join(train_lines))]:
            tf, jf = os.path.join(tmp, 'text.txt'), os.path.join(tmp, 'ids.json')
            open(tf, 'w', encoding='utf-8').write(text)
            ids = enc.encode(text)
            assert enc.decode(ids) == text
            json.dump({'lines': [enc.encode(l) for l in text.split('\n')], 'whole': ids}, open(jf, 'w'))
            r = subprocess.run(['node', os.path.join(HERE, 'check_tokenizer.js'), args.model, tf, jf],
                               capture_output=True, text=True)
            print(f'{name}: {r.stdout.strip()} {r.stderr.strip()}')
            ok = ok and r.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
