"""A small byte-level BPE trainer/encoder that writes a Hugging Face tokenizer.json.

Pre-tokenization is GPT-2's (the ByteLevel pre-tokenizer with use_regex true):
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
Python's `re` has no \\p{..}; on ASCII text (the KJV is ASCII; encode() asserts it) the classes
are exactly [A-Za-z] and [0-9].

Training: count the pre-tokenized word types once, then merge over types: each step merges the
most frequent adjacent pair (ties broken by the pair's strings, smallest first), updating only
the words that contain it. Deterministic.
"""
import collections
import heapq
import json
import re

GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")

BOS = '<｜begin▁of▁sentence｜>'
EOS = '<｜end▁of▁sentence｜>'


def bytes_to_unicode():
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()
U2B = {u: b for b, u in B2U.items()}


def pretokenize(text):
    assert text.isascii(), 'this encoder handles ASCII text only'
    return [''.join(B2U[b] for b in w.encode('utf-8')) for w in GPT2_ASCII.findall(text)]


def train(texts, vocab_size, n_special=2, log=print):
    """Returns (vocab {token: id}, merges [(a, b)]): ids 0..255 the bytes (in byte order),
    then the merges in order; the last n_special ids are left for the special tokens."""
    counts = collections.Counter()
    for t in texts:
        counts.update(pretokenize(t))
    words = [list(w) for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freq[i]
            where[p].add(i)
    # Lazy max-heap of (-count, a, b): stale entries are skipped when popped; equal counts
    # pop the smallest (a, b) first.
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    n_merges = vocab_size - 256 - n_special
    merges = []
    vocab = {B2U[b]: b for b in range(256)}
    for step in range(n_merges):
        while heap:
            negc, a, b = heapq.heappop(heap)
            if pair_count.get((a, b), 0) == -negc:
                break
        else:
            break
        c = -negc
        if c < 2:
            break
        merges.append((a, b))
        ab = a + b
        vocab[ab] = 256 + step
        touched = set()
        for i in sorted(where.pop((a, b))):
            w = words[i]
            f = freq[i]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                touched.add(p)
                if pair_count[p] <= 0:
                    del pair_count[p]
            nw = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    nw.append(ab)
                    j += 2
                else:
                    nw.append(w[j])
                    j += 1
            words[i] = nw
            for p in zip(nw, nw[1:]):
                pair_count[p] += f
                where[p].add(i)
                touched.add(p)
        pair_count.pop((a, b), None)
        for p in sorted(touched):
            if p in pair_count and p != (a, b):
                heapq.heappush(heap, (-pair_count[p], p[0], p[1]))
        if step % 500 == 0:
            log(f'bpe merge {step}: {a!r}+{b!r} count {c}')
    return vocab, merges


class Encoder:
    def __init__(self, vocab, merges, specials):
        self.vocab = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.specials = specials  # {content: id}
        self.inv = {i: t for t, i in vocab.items()}
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best = None
            for k in range(len(parts) - 1):
                r = self.ranks.get((parts[k], parts[k + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, k)
            if best is None:
                break
            a, b = parts[best[1]], parts[best[1] + 1]
            out = []
            j = 0
            while j < len(parts):
                if j + 1 < len(parts) and parts[j] == a and parts[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(parts[j])
                    j += 1
            parts = out
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for w in pretokenize(text):
            ids.extend(self.bpe(w))
        return ids

    def decode(self, ids):
        rev = {v: k for k, v in self.specials.items()}
        out = bytearray()
        for i in ids:
            if i in rev:
                continue
            out.extend(U2B[c] for c in self.inv[i])
        return out.decode('utf-8', errors='replace')


def hf_tokenizer_json(vocab, merges, specials):
    """tokenizer.json (Hugging Face tokenizers format), specials {content: id}."""
    full = dict(vocab)
    full.update(specials)
    added = [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False,
              'special': True} for s, i in sorted(specials.items(), key=lambda kv: kv[1])]
    return {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': added,
        'normalizer': None,
        'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
        'post_processor': None,
        'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                  'vocab': dict(sorted(full.items(), key=lambda kv: kv[1])), 'merges': [f'{a} {b}' for a, b in merges]},
    }


# DeepSeek-V2-Chat's format: "User: ...\n\nAssistant: ...<eos>" (bos first).
CHAT_TEMPLATE = ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
                 "{{ bos_token }}{% for message in messages %}"
                 "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
                 "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
                 "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def hf_tokenizer_config(model_max_length):
    return {'add_bos_token': True, 'add_eos_token': False, 'bos_token': BOS, 'eos_token': EOS,
            'clean_up_tokenization_spaces': False, 'legacy': True, 'model_max_length': model_max_length,
            'pad_token': None, 'tokenizer_class': 'LlamaTokenizerFast', 'chat_template': CHAT_TEMPLATE}


def save(dirpath, vocab, merges, specials, model_max_length):
    with open(f'{dirpath}/tokenizer.json', 'w', encoding='utf-8') as f:
        json.dump(hf_tokenizer_json(vocab, merges, specials), f, ensure_ascii=False)
        f.write('\n')
    with open(f'{dirpath}/tokenizer_config.json', 'w', encoding='utf-8') as f:
        json.dump(hf_tokenizer_config(model_max_length), f, ensure_ascii=False, indent=2)
        f.write('\n')
