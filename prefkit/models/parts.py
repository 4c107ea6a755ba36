"""The parts of prefkit's built-in models that both the tiny (:mod:`prefkit.models.tiny`) and the
real-size (:mod:`prefkit.models.real_size`) builders use: the offline tiny tokenizers, the tiny CLIP
text config and VAE, per-component seeding, and building a model folder with an atomic publish.

They live here so that neither builder module imports the other back (no import cycle); the other
model builders (:mod:`~prefkit.models.tiny_sdxl`, :mod:`~prefkit.models.tiny_clip`,
:mod:`~prefkit.models.tiny_judges`, :mod:`~prefkit.models.shapes_model`) and the benchmarks import them
from here too.

Heavy libraries (torch, diffusers, transformers) are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear raccoon fox wolf "
    "lizard beetle ant butterfly fish shark whale dolphin squirrel mouse rat snake turtle frog chicken duck "
    "goose bee pig turkey fly llama camel bat gorilla hedgehog kangaroo"
).split()

_COMMON = (
    "a an the of photo on in and with picture image painting drawing "
    "red green blue yellow orange purple pink brown black white gray "
    "circle square triangle background small large big tiny cute "
    "high low quality blurry sharp good bad style realistic cartoon"
).split()

#: Words that tokenize to a single token in the tiny CLIP and T5 tokenizers (any other string still
#: encodes without unknown tokens, just in more pieces).
PROMPT_WORDS: tuple[str, ...] = tuple(dict.fromkeys(_COMMON + _ANIMALS))

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77
_T5_MAX_LENGTH = 32  # prefkit caps T5 padding at the tokenizer's model_max_length (see families.py)

# Characters the T5 (Unigram) tokenizer knows one by one: printable ASCII and Latin-1 / Latin Extended-A.
# transformers 5 rebuilds T5Tokenizer from the vocabulary on load and drops byte fallback, so characters
# outside these ranges (CJK, emoji...) become <unk> in T5 only; the CLIP tokenizers are byte-level and
# never produce an unknown token.
_T5_CHARS = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xA1, 0x180)]


# --------------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode symbol table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _train_word_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """Deterministic BPE training on a word list until every word is one symbol.

    Merges are learned greedily (most frequent pair, ties broken by the pair's text), which is exactly
    the order BPE encoding replays, so every training word encodes to a single token.
    """
    words = [list(w) for w in words if w]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for i, w in enumerate(words):
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out


def _clip_vocab_and_merges(
    words: tuple[str, ...] = PROMPT_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary laid out like CLIP's: 256 bytes, 256 ``</w>`` bytes, merges, specials."""
    b2u = _bytes_to_unicode()
    symbols = [b2u[b] for b in range(256)]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    split_words = []
    for word in words:
        chars = [b2u[b] for b in word.lower().encode("utf-8")]
        chars[-1] += "</w>"
        split_words.append(chars)
    merges = _train_word_merges(split_words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return vocab, merges


def clip_tokenizer(words: tuple[str, ...] = PROMPT_WORDS, max_length: int = CLIP_MAX_LENGTH):
    """A byte-level BPE CLIP tokenizer built offline, with each of ``words`` one token."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(words: tuple[str, ...] = PROMPT_WORDS, max_length: int = _T5_MAX_LENGTH):
    """A Unigram T5 tokenizer built offline, with each of ``words`` one piece."""
    from transformers import T5Tokenizer

    # T5 layout: <pad>=0, </s>=1, <unk>=2, then pieces with log-prob scores (whole words beat characters).
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -5.0) for w in words]
    pieces += [(c, -8.0) for c in _T5_CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


# --------------------------------------------------------------------------------------------------
# tiny components
# --------------------------------------------------------------------------------------------------


def clip_text_config(tokenizer, hidden_size: int = 32, projection_dim: int = 32):
    """A 2-layer CLIP text config of ``hidden_size`` whose vocabulary and special ids are ``tokenizer``'s."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae(latent_channels: int, *, scaling_factor: float, shift_factor: float | None, quant_conv: bool):
    """AutoencoderKL with two blocks: downscale 2 (32 px image -> 16x16 latent)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def seed_component(seed: int, offset: int) -> None:
    """Seed torch before each component so one component's size never changes another's weights."""
    import torch

    torch.manual_seed(seed * 1000 + offset)


# --------------------------------------------------------------------------------------------------
# building and atomic publishing
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quieted_libraries() -> Iterator[None]:
    """Silence diffusers/transformers logs and progress bars while building; restore them afterwards."""
    import diffusers.utils.logging as d_log
    import transformers.utils.logging as t_log

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (d_log, t_log)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()


def temp_sibling(path: Path, tag: str) -> Path:
    """A new hidden name beside ``path`` (same folder, so a rename into place is atomic), unique per process."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def rename_into_place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename a finished ``tmp`` folder to ``path``.

    If ``path`` already exists: with ``overwrite`` the old folder is moved aside and replaced; without it
    the existing folder wins (another process finished first) and ``tmp`` is discarded.
    """
    try:
        os.rename(tmp, path)  # atomic; fails if path is a non-empty folder
        return
    except OSError:
        if not path.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = temp_sibling(path, "old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if not path.exists():
            os.rename(old, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)


def build_model_folder(
    make: Callable[[int], Any] | None,
    path: str | os.PathLike,
    seed: int,
    *,
    overwrite: bool = True,
    quiet=None,
    write: Callable[[Path, int], None] | None = None,
) -> str:
    """Build ``make(seed)`` into a temporary sibling folder, then rename it to ``path``. ``quiet`` is the
    context manager that silences the libraries while saving (default: diffusers' and transformers').
    ``write(folder, seed)``, given instead of ``make``, writes the folder itself (the real-size models
    save one component at a time)."""
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        with (quiet or quieted_libraries)():
            if write is not None:
                write(tmp, seed)
            else:
                make(seed).save_pretrained(tmp, safe_serialization=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rename_into_place(tmp, path, overwrite=overwrite)
    return str(path)
