"""Tiny, randomly initialised judge models built entirely in code (no downloads): vision-language
models and a text encoder.

* ``build_tiny_llava``: a ``LlavaForConditionalGeneration`` laid out like llava-hf/llava-1.5-7b-hf (CLIP
  vision tower with a CLS token, ``vision_feature_select_strategy="default"``, a Llama text model, the
  llava-1.5 ``USER: <image>\\n... ASSISTANT:`` chat template, a BOS token added by the tokenizer).
* ``build_tiny_llava_interleave``: a multi-image ``LlavaForConditionalGeneration`` laid out like
  llava-hf/llava-interleave-qwen-0.5b-hf (SigLIP vision tower without CLS, ``"full"`` features, a Qwen2
  text model, the ``<|im_start|>user <image><image>\\n...<|im_end|>`` template), for the pairwise method.

* ``build_tiny_deberta``: a ``DebertaModel`` laid out like microsoft/deberta-xlarge-mnli (DeBERTa v1:
  relative attention, content-to-position and position-to-content, no absolute positions; a byte-level BPE
  ``DebertaTokenizer`` adding ``[CLS]`` ... ``[SEP]``), 3 layers, for the BERTScore of
  ``--source llava --method bertscore`` (``--bert-model FOLDER --bert-layer N``).

The LLaVA models are saved with ``save_pretrained`` (model + ``LlavaProcessor``) and load back with the ordinary
``AutoProcessor.from_pretrained(path)`` / ``AutoModelForImageTextToText.from_pretrained(path)``. Images are
resized and cropped to 32 x 32 px: 16 image tokens each (4 x 4 patches of 8 px).

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a small corpus, so any string
encodes, and "Yes", " Yes", "yes", " yes", "No", " No" (and the digits) are single tokens: a judge that
reads P("Yes") from the first answer token works as it does with the real checkpoints. ``<image>`` is a
special token.

Why not llava-onevision for the multi-image model: ``LlavaOnevisionProcessor`` has a video processor,
and transformers 5 cannot build or load it without torchvision (not installed here), so the folder would
not load with ``AutoProcessor``. LLaVA-Interleave is the multi-image LLaVA that loads without it.

Rebuild a folder from the command line::

    python -m prefkit.models.tiny_judges tiny-llava /tmp/tiny-llava
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefkit.models.parts import PROMPT_WORDS, build_model_folder, seed_component

__all__ = [
    "IMAGE_SIZE",
    "JUDGE_MODELS",
    "LLAVA15_CHAT_TEMPLATE",
    "QWEN_CHAT_TEMPLATE",
    "build_tiny_deberta",
    "build_tiny_llava",
    "build_tiny_llava_interleave",
]

#: Side of the square images the tiny judges see (after resize + centre crop).
IMAGE_SIZE = 32
_PATCH = 8
_MAX_LENGTH = 512

#: llava-hf/llava-1.5-7b-hf's chat template (images first, then the text; "ASSISTANT:" to generate).
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: llava-hf/llava-interleave-qwen-*-hf / llava-onevision's chat template (Qwen2 ChatML).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words of the judges' questions and chat templates, on top of the prompt vocabulary.
_JUDGE_WORDS = (
    "yes no does this image show please answer or which matches match better first second is and "
    "description user assistant system"
).split()

# Words of DDPO's BERTScore reference ("The image contains {prompt}") and question, for the tiny DeBERTa.
_TEXT_ENCODER_WORDS = "the image contains answer concisely what is going on in this".split()

#: Strings that must encode to exactly one token (checked when building).
SINGLE_TOKENS = ("Yes", " Yes", "yes", " yes", "No", " No", "no", " no", "1", "2")


def _corpus(words: tuple[str, ...] | None = None) -> list[str]:
    words = list(dict.fromkeys(words or [*PROMPT_WORDS, *_JUDGE_WORDS]))
    lines = []
    for w in words:
        for v in dict.fromkeys((w, w.capitalize(), w.upper())):
            lines += [v, " " + v]
    lines += ["1", "2", " 1", " 2", "USER:", "ASSISTANT:"]
    return lines * 2  # every word twice: all merges reach min_frequency


def _train_bpe(specials: list[str], corpus: list[str]):
    """A byte-level BPE (GPT-2 style) ``tokenizers.Tokenizer`` trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,  # more than the corpus needs: training stops when every word is one token
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def _tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, extra: dict[str, str]):
    """A byte-level BPE (GPT-2 style) trained on ``_corpus()``, wrapped for transformers."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(specials, _corpus())
    if bos is not None:  # like Llama: the tokenizer adds BOS, the chat template does not
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    for s in SINGLE_TOKENS:
        ids = tok.encode(s, add_special_tokens=False).ids
        if len(ids) != 1:  # pragma: no cover - a corpus / trainer change would break the judges' tests
            raise RuntimeError(f"tiny judge tokenizer: {s!r} is {len(ids)} tokens, not 1")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra,
        model_max_length=_MAX_LENGTH,
    )


def _text_kwargs(tokenizer) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": _MAX_LENGTH,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_kwargs() -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": _PATCH,
    }


class _ModelAndProcessor:
    """A model and its processor; ``save_pretrained`` writes both into one folder."""

    def __init__(self, model, processor) -> None:
        self.model, self.processor = model, processor

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(path, **kwargs)
        self.processor.save_pretrained(path)


def _make_llava(seed: int) -> _ModelAndProcessor:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        extra={"image_token": "<image>"},
    )
    # The PIL image processor is saved as "CLIPImageProcessor": with torchvision installed, AutoProcessor
    # picks the torchvision one, without it the PIL one (as the real llava-1.5 folder does).
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",  # drop CLS: 16 image tokens
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_kwargs(), projection_dim=32),
        text_config=LlamaConfig(**_text_kwargs(tokenizer), bos_token_id=tokenizer.bos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // _PATCH) ** 2,
    )
    seed_component(seed, 0)
    model = LlavaForConditionalGeneration(config).eval()
    return _ModelAndProcessor(model, processor)


def _make_llava_interleave(seed: int) -> _ModelAndProcessor:
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra={"image_token": "<image>"},
    )
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH,
        vision_feature_select_strategy="full",  # SigLIP has no CLS: all 16 patches
        num_additional_image_tokens=0,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(**_vision_kwargs(), vision_use_head=False),
        text_config=Qwen2Config(**_text_kwargs(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=(IMAGE_SIZE // _PATCH) ** 2,
    )
    seed_component(seed, 0)
    model = LlavaForConditionalGeneration(config).eval()
    return _ModelAndProcessor(model, processor)


class _TextEncoder(_ModelAndProcessor):
    """A text encoder and its tokenizer (the processor slot), saved into one folder."""


def _make_deberta(seed: int) -> _TextEncoder:
    import json

    from transformers import DebertaConfig, DebertaModel, DebertaTokenizer

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # DebertaTokenizer's default ids 0-4
    words = (*PROMPT_WORDS, *_JUDGE_WORDS, *_TEXT_ENCODER_WORDS)
    bpe = json.loads(_train_bpe(specials, _corpus(words)).to_str())["model"]
    tokenizer = DebertaTokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]],
        model_max_length=_MAX_LENGTH,
    )
    config = DebertaConfig(  # microsoft/deberta-xlarge-mnli's attention, at a tiny size
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        position_biased_input=False,
        max_relative_positions=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    seed_component(seed, 0)
    return _TextEncoder(DebertaModel(config).eval(), tokenizer)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' logs and progress bars while building (diffusers is not imported: ~3 s)."""
    import transformers.utils.logging as t_log

    level, bars = t_log.get_verbosity(), t_log.is_progress_bar_enabled()
    t_log.set_verbosity_error()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        t_log.set_verbosity(level)
        if bars:
            t_log.enable_progress_bar()


def _build(make: Callable[[int], _ModelAndProcessor], path: str | os.PathLike, seed: int) -> str:
    """prefkit.models.tiny's atomic build, silencing transformers only (no diffusers import)."""
    return build_model_folder(make, path, seed, quiet=_quiet)


def build_tiny_llava(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny llava-1.5-style judge (one image per prompt) into ``path``; returns the folder."""
    return _build(_make_llava, path, seed)


def build_tiny_llava_interleave(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny LLaVA-Interleave-style judge (several images per prompt) into ``path``."""
    return _build(_make_llava_interleave, path, seed)


def build_tiny_deberta(path: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny DeBERTa text encoder (BERTScore's embeddings; 3 layers) into ``path``."""
    return _build(_make_deberta, path, seed)


JUDGE_MODELS: dict[str, Callable[..., str]] = {
    "tiny-llava": build_tiny_llava,
    "tiny-llava-interleave": build_tiny_llava_interleave,
    "tiny-deberta": build_tiny_deberta,
}


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.models.tiny_judges", description="(Re)build a tiny judge model folder."
    )
    parser.add_argument("name", choices=sorted(JUDGE_MODELS))
    parser.add_argument("path", help="output folder (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(JUDGE_MODELS[args.name](Path(args.path), seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
