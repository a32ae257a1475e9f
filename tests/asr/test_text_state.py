"""TextState against NeMo's own one-shot decode, on real NeMo decoding objects.

The engine detokenizes with ``model.decoding.decode_tokens_to_str_with_strip_punctuation``,
which drops one space before each punctuation mark of the model's vocabulary. TextState folds
old ids into committed text; these tests check that no fold ever changes what the one-shot
decode of every id gives, for a char vocabulary (space is its own token) and a SentencePiece
BPE one (the space is part of the next token, and ``▁`` is a token too).
"""

from __future__ import annotations

import string

import numpy as np
import pytest
from omegaconf import OmegaConf

from services.asr.engine.arch import model_config
from services.asr.engine.state import TextState

CHAR_LABELS = list(" " + string.ascii_lowercase + "'.,?!")
PUNCTUATION = {"'", ".", ",", "?", "!"}


@pytest.fixture(scope="module")
def char_decoding():
    """Decoding of a tiny char RNNT whose labels include punctuation marks."""
    from nemo.collections.asr.models import EncDecRNNTModel

    config = model_config("tiny") | {"labels": CHAR_LABELS}
    model = EncDecRNNTModel(cfg=OmegaConf.create(config)).eval()
    # NeMo finds the marks it strips a space before from the vocabulary itself.
    assert model.decoding.supported_punctuation == PUNCTUATION
    return model.decoding


@pytest.fixture(scope="module")
def bpe_decoding(tmp_path_factory):
    """Decoding of a tiny RNNT with a SentencePiece BPE tokenizer trained here by NeMo."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    root = tmp_path_factory.mktemp("bpe")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "hello", "world", "is", "it", "what"]
    lines = [
        " ".join(rng.choice(words, 8)) + str(rng.choice([".", "?", "!", " ,", " .", "'s"]))
        for _ in range(200)
    ]
    (root / "text.txt").write_text("\n".join(lines))
    create_spt_model(
        str(root / "text.txt"),
        60,
        10**6,
        do_lower_case=False,
        tokenizer_type="bpe",
        output_dir=str(root / "spt"),
    )
    config = model_config("tiny")
    del config["labels"]
    config["tokenizer"] = {"dir": str(root / "spt"), "type": "bpe"}
    model = EncDecRNNTBPEModel(cfg=OmegaConf.create(config)).eval()
    vocab = model.tokenizer.vocab
    # What makes the fold hard: a lone "▁" (a space ending the folded text) and marks.
    assert {"\u2581", ".", ",", "?", "!", "\u2581."} <= set(vocab)
    assert {".", ",", "?", "!"} <= model.decoding.supported_punctuation
    return model.decoding, vocab


def _ids(vocab: list[str], tokens: list[str]) -> list[int]:
    return [vocab.index(t) for t in tokens]


def _weights(vocab: list[str]) -> np.ndarray:
    """Spaces and punctuation often, so folds land between them often."""
    w = np.ones(len(vocab))
    for i, token in enumerate(vocab):
        if token.strip("\u2581 ") == "":
            w[i] = 0.25 * len(vocab)
        elif set(token.strip("\u2581")) <= PUNCTUATION:
            w[i] = 0.06 * len(vocab)
    return w / w.sum()


def _check_random_sequences(
    detok, n_tokens: int, p: np.ndarray, seed: int, max_tail: int, keep_tail: int
) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(30):
        ids = rng.choice(n_tokens, int(rng.integers(300, 1201)), p=p).tolist()
        text = TextState(detok, max_chars=10**6, max_tail=max_tail, keep_tail=keep_tail)
        done = 0
        while done < len(ids):
            piece = ids[done : done + int(rng.integers(1, 13))]
            more = rng.choice(n_tokens, int(rng.integers(1, 13)), p=p).tolist()
            assert text.preview(piece) == detok(ids[: done + len(piece)])
            text.extend(piece)
            done += len(piece)
            assert text.text == detok(ids[:done]), done
            assert text.preview(more) == detok(ids[:done] + more)
            assert len(text.tail) <= 2 * max_tail + 12


@pytest.mark.parametrize(("max_tail", "keep_tail"), [(256, 32), (24, 4)])
def test_char_vocabulary_random_sequences_match_one_shot_decode(char_decoding, max_tail, keep_tail):
    detok = char_decoding.decode_tokens_to_str_with_strip_punctuation
    p = _weights(CHAR_LABELS)
    _check_random_sequences(detok, len(CHAR_LABELS), p, 1, max_tail, keep_tail)


@pytest.mark.parametrize(("max_tail", "keep_tail"), [(256, 32), (24, 4)])
def test_bpe_vocabulary_random_sequences_match_one_shot_decode(bpe_decoding, max_tail, keep_tail):
    decoding, vocab = bpe_decoding
    detok = decoding.decode_tokens_to_str_with_strip_punctuation
    p = _weights(vocab)
    p[vocab.index("<unk>")] = 0.0  # decodes to " ⁇ ": not something a model emits
    _check_random_sequences(detok, len(vocab), p / p.sum(), 2, max_tail, keep_tail)


@pytest.mark.parametrize("piece", [1, 257])
def test_char_space_then_period_at_the_fold_point(char_decoding, piece):
    detok = char_decoding.decode_tokens_to_str_with_strip_punctuation
    # With the defaults the first fold comes at 257 ids, splitting 32 before the end: between
    # the space (index 224) and the period.
    chars = "ae" * 112 + " ." + "st" * 40
    ids = _ids(CHAR_LABELS, list(chars))
    assert detok(ids) == "ae" * 112 + "." + "st" * 40  # NeMo strips the space
    text = TextState(detok, max_chars=10**6)
    for i in range(0, len(ids), piece):
        text.extend(ids[i : i + piece])
    assert text.committed  # a fold happened
    assert text.text == detok(ids)
    assert text.preview(_ids(CHAR_LABELS, list(" !"))) == detok(ids) + "!"


def test_bpe_lone_space_token_then_period_at_the_fold_point(bpe_decoding):
    decoding, vocab = bpe_decoding
    detok = decoding.decode_tokens_to_str_with_strip_punctuation
    tokens = ["\u2581the", "\u2581cat"] * 112 + ["\u2581", "."] + ["\u2581sat"] * 40
    ids = _ids(vocab, tokens)
    assert detok(ids) == " ".join(["the cat"] * 112) + "." + " sat" * 40
    text = TextState(detok, max_chars=10**6)
    for i in range(len(ids)):  # the fold at 257 ids would split between "▁" and "."
        text.extend(ids[i : i + 1])
    assert text.committed
    assert text.text == detok(ids)


def test_fold_waits_for_a_split_that_reproduces_the_text_and_stays_bounded():
    # A detokenizer that joins ids further apart than a space and a mark: each "^" swaps the
    # case of the 6 characters before it, so no split with a "^" close after it reproduces the
    # text. In a run of "ab^" every split is such a one: the fold must wait for the run's end.
    vocab = list("ab ^")

    def detok(ids: list[int]) -> str:
        out: list[str] = []
        for i in ids:
            if vocab[i] == "^":
                out[-6:] = [c.swapcase() for c in out[-6:]]
            else:
                out.append(vocab[i])
        return "".join(out)

    rng = np.random.default_rng(3)
    ids: list[int] = []
    while len(ids) < 3000:
        ids += rng.choice(3, int(rng.integers(10, 40))).tolist()  # a, b and spaces
        ids += [0, 1, 3] * int(rng.integers(10, 16))
    text = TextState(detok, max_chars=10**6, max_tail=40, keep_tail=16)
    longest = 0
    for i in range(0, len(ids), 5):
        text.extend(ids[i : i + 5])
        assert text.text == detok(ids[: i + 5])
        longest = max(longest, len(text.tail))
    assert 40 + 5 < longest <= 2 * 40 + 5  # folds waited, within the hard cap
    assert len(text.committed) > 1000
    # A run longer than the tail's hard cap: the fold goes ahead, the tail stays bounded.
    text.extend([0, 1, 3] * 200)
    assert len(text.tail) <= 2 * 40
