"""The King James Bible text of Debian's bible-kjv-text package, split into chapters.

The text comes from the package's compressed database (/usr/lib/bible.data), read with the
`bible` program of the bible-kjv package (a dependency of bible-kjv-text), one verse per line.

Chapter format (exactly what the model is trained on and what heldout.txt holds):

    <Book> <chapter>\n<verse 1 text>\n<verse 2 text>\n...<last verse text>\n

(verse numbers dropped). Held-out split: the chapters whose 0-based index in canonical order
(Genesis 1 = 0, ..., Revelation 22 = 1188) is 19 mod 20 (Genesis 20, Genesis 40, Exodus 10, ...):
59 chapters. Every other chapter (1130) is training data.
"""
import subprocess

HELDOUT_EVERY = 20
HELDOUT_REMAINDER = 19


def read_chapters():
    """[(header, [verse, ...]), ...] in canonical order."""
    out = subprocess.run(['bible', '-l100000', 'Gen1:1-Rev22:21'], check=True, capture_output=True, text=True,
                         cwd='/tmp').stdout
    chapters = []
    for line in out.split('\n'):
        if not line.strip():
            continue
        if line.startswith('  '):
            num, text = line.strip().split(' ', 1)
            assert num.isdigit(), line
            chapters[-1][1].append(text.strip())
        else:
            chapters.append((line.strip(), []))
    assert len(chapters) == 1189, len(chapters)
    assert sum(len(v) for _, v in chapters) == 31102
    return chapters


def chapter_text(ch):
    header, verses = ch
    return header + '\n' + '\n'.join(verses) + '\n'


def split():
    """(train chapter texts, held-out chapter texts)."""
    chs = read_chapters()
    train, held = [], []
    for i, ch in enumerate(chs):
        (held if i % HELDOUT_EVERY == HELDOUT_REMAINDER else train).append(chapter_text(ch))
    for t in train + held:
        assert t.isascii()
    return train, held


if __name__ == '__main__':
    tr, he = split()
    print(len(tr), sum(map(len, tr)), len(he), sum(map(len, he)))
    print(he[0][:200])
