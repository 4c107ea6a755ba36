"""LLaVA judges: VQAScore (one image at a time) and a pairwise comparison (two images in one prompt).

``--method vqascore`` (default; a :class:`~prefkit.judges.Scorer`), after VQAScore (Lin et al. 2024,
"Evaluating Text-to-Visual Generation with Image-to-Text Generation"): each (image, prompt) becomes one
user turn of the model's own chat template, an image plus the question::

    Does this image show "{prompt}"? Please answer yes or no.

and one forward pass reads the distribution of the FIRST answer token at the last position (softmax over
the whole vocabulary, in float32). The score is P(yes) = the sum of the probabilities of the single-token
spellings of the answer: "Yes", " Yes", "yes", " yes" (those the tokenizer has as one token, e.g.
``▁Yes`` for llava-1.5's Llama tokenizer, ``ĠYes`` for a byte-level BPE). Batches are left-padded, with
the position ids ``generate`` would use, so a batch scores exactly as its images one by one.

``--method pairwise`` (a :class:`~prefkit.judges.PairJudge`) shows both images in one prompt::

    The first image is image 1 and the second image is image 2. Which image matches "{prompt}" better?
    Answer 1 or 2.

and compares P("1") with P("2") of the first answer token. Every pair is asked in both orders (position
bias); only a verdict both orders agree on is kept. A disagreement gives choice None, with
``order_swapped_agree: False`` and both orders' probabilities in the label's ``judge``. ``score_0`` /
``score_1`` are P(image 0 is better) and its complement, P("1") / (P("1") + P("2")) averaged over the two
orders. llava-1.5 (and LLaVA-NeXT) were not trained on several images per prompt: the pairwise method
refuses them; use a multi-image model (LLaVA-Interleave, LLaVA-OneVision) or ``--method vqascore``.

``--method bertscore`` (a :class:`~prefkit.judges.Scorer`) is DDPO's prompt-alignment reward (Black et
al. 2023, ``llava_bertscore`` in kvablack/ddpo-pytorch with its server kvablack/LLaVA-server): the model
describes each image, asked (the image, then the question, with no prompt in it)::

    Answer concisely: what is going on in this image?

decoding greedily (the argmax token each step) for at most 64 new tokens, or until the end of its turn;
the description (special tokens dropped, whitespace stripped) is the candidate, and ``"The image contains
{prompt}"`` the reference, of BERTScore (Zhang et al. 2020) by the ``bert-score`` package on
``--bert-model`` (default microsoft/deberta-xlarge-mnli, layer 40, as DDPO) at ``--bert-layer``: no idf
weighting, no baseline rescaling. The score is the **recall**: the mean over the reference's tokens of
their best cosine similarity to a token of the description (both sentences with [CLS] and [SEP], which
take part in the matching but weigh 0). An empty description scores 0 (bert-score's rule). Every pair is
scored on its own (unpadded): bert-score's batched matching gives padding a similarity of 0, which beats
a token whose similarities are all negative, so a score would depend on its batch. See docs/math.md.

Models load with ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(--model, revision=...,
dtype=...)`` (transformers 5 spells it ``dtype``; 4.x ``torch_dtype``). ``--template`` replaces the
question; ``{prompt}`` marks where the sample's prompt goes. The template is recorded in every label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.judges.common import rgb_images, torch_device, torch_dtype

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
DEFAULT_PAIRWISE_MODEL = "llava-hf/llava-interleave-qwen-7b-hf"
VQA_TEMPLATE = 'Does this image show "{prompt}"? Please answer yes or no.'
PAIRWISE_TEMPLATE = (
    "The first image is image 1 and the second image is image 2. "
    'Which image matches "{prompt}" better? Answer 1 or 2.'
)
METHODS = ("vqascore", "pairwise", "bertscore")

#: DDPO's llava_bertscore: the question, the BERTScore reference, the description's length and BERT model.
DESCRIBE_QUESTION = "Answer concisely: what is going on in this image?"
BERTSCORE_REFERENCE = "The image contains {prompt}"
DESCRIPTION_MAX_TOKENS = 64
DEFAULT_BERT_MODEL = "microsoft/deberta-xlarge-mnli"

#: Spellings of the answer whose single-token forms (with and without a leading space) are summed.
YES_WORDS = ("Yes", "yes")
PAIR_WORDS = {"1": ("1",), "2": ("2",)}

# Model types whose language model takes ordinary 1-D position ids: their batches are scored with one
# forward pass and the position ids ``generate`` would build from the attention mask. Any other
# image-text-to-text model is run through ``generate(max_new_tokens=1)``, which knows its own rules.
_PLAIN_ROPE_TYPES = {"llava", "llava_next", "llava_onevision", "llava_next_video", "vipllava"}


def make_llava_judge(options):
    """The LLaVA judge for ``options.method``: ``vqascore`` (default, a Scorer) or ``pairwise``."""
    method = options.method or "vqascore"
    if method not in METHODS:
        raise PrefkitError(f"--method {method!r}: the llava judge has methods {', '.join(METHODS)}")
    if method == "vqascore":
        return VQAScoreJudge(options)
    if method == "bertscore":
        return BERTScoreJudge(options)
    return PairwiseJudge(options)


# -- helpers --------------------------------------------------------------------------------------------


def _check_template(template: str, needs_prompt: bool = True) -> str:
    if needs_prompt and "{prompt}" not in template:
        raise PrefkitError(
            f"--template {template!r}: put {{prompt}} where the sample's prompt goes, e.g. {VQA_TEMPLATE!r}"
        )
    return template


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("owner/name" or "name")."""
    return name.startswith((".", "/", "~")) or "\\" in name or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)


def answer_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Ids of the single tokens that spell one of ``words``, with or without a leading space.

    Both ``encode(word)`` / ``encode(" " + word)`` (kept where they give one token) and the vocabulary's
    ``word`` / ``▁word`` (SentencePiece) / ``Ġword`` (byte-level BPE) entries count, so a tokenizer that
    adds a prefix space, or splits a leading space off, still finds every way the answer can start.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids: list[int] = []
    for word in words:
        for text in (word, " " + word):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(int(enc[0]))
        for piece in (word, "▁" + word, "Ġ" + word):
            if piece in vocab:
                ids.append(int(vocab[piece]))
    return [i for i in dict.fromkeys(ids) if i not in special]


def _single_image_model(config) -> str | None:
    """Why a model must not be shown two images in one prompt (None: it may)."""
    model_type = getattr(config, "model_type", "")
    text_type = getattr(getattr(config, "text_config", None), "model_type", "")
    if model_type == "llava" and text_type in ("llama", "mistral"):
        return f"a LLaVA-1.5-style model (llava with a {text_type} language model)"
    if model_type in ("llava_next", "vipllava"):
        return f"a {model_type} model"
    return None


# -- the shared model runner ----------------------------------------------------------------------------


class _LlavaJudge:
    method = ""
    default_template = ""
    default_model = DEFAULT_MODEL
    template_needs_prompt = True

    def __init__(self, options) -> None:
        self.model_id = options.model or self.default_model
        self.processor_id = options.processor or self.model_id
        self.revision = options.revision
        self.template = _check_template(options.template or self.default_template, self.template_needs_prompt)
        self.device = torch_device(options.device)
        self.dtype = torch_dtype(options.dtype)
        self.batch_size = max(1, int(options.batch_size))
        self._load()

    # loading ------------------------------------------------------------------------------------------

    def _hint(self) -> str:
        return (
            "Pass --model with a local folder (save_pretrained output) or a hub id that is downloaded "
            f"or in the local cache (default for --method {self.method}: {self.default_model})."
        )

    def _check_exists(self, name: str, flag: str) -> None:
        if _looks_local(name) and not Path(name).expanduser().is_dir():
            raise PrefkitError(f"{flag} {name!r}: no such folder. {self._hint()}")

    def _from_pretrained(self, what: str, flag: str, loader, name: str, **kwargs):
        try:
            return loader(name, **kwargs)
        except Exception as exc:  # OSError (not found / offline), ValueError (not a VLM), ImportError...
            raise PrefkitError(
                f"{flag} {name!r}: cannot load the llava judge's {what}: {type(exc).__name__}: {exc}\n"
                f"{self._hint()}"
            ) from exc

    def check_config(self, config) -> None:
        """Refuse a model the method cannot use (before its weights are loaded)."""

    def _load(self) -> None:
        import transformers.utils.logging as t_log
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self._check_exists(self.model_id, "--model")
        if self.processor_id != self.model_id:
            self._check_exists(self.processor_id, "--processor")
        rev = {"revision": self.revision}
        config = self._from_pretrained("config", "--model", AutoConfig.from_pretrained, self.model_id, **rev)
        self.check_config(config)
        bars = t_log.is_progress_bar_enabled()
        t_log.disable_progress_bar()
        try:
            processor = self._from_pretrained(
                "processor",
                "--processor" if self.processor_id != self.model_id else "--model",
                AutoProcessor.from_pretrained,
                self.processor_id,
                **(rev if self.processor_id == self.model_id else {}),
            )
            model = self._from_pretrained(
                "model",
                "--model",
                AutoModelForImageTextToText.from_pretrained,
                self.model_id,
                dtype=self.dtype,
                **rev,
            )
        finally:
            if bars:
                t_log.enable_progress_bar()
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "chat_template", None) is None:
            raise PrefkitError(
                f"--model {self.model_id!r}: its processor has no tokenizer or no chat template; "
                "the llava judge needs an image-text chat model (e.g. llava-hf/llava-1.5-7b-hf)"
            )
        tokenizer.padding_side = "left"  # the last position of every row is the prompt's last token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.processor, self.tokenizer = processor, tokenizer
        self.model = model.to(self.device).eval()
        self.model_type = getattr(model.config, "model_type", "")

    # running ------------------------------------------------------------------------------------------

    def question(self, prompt: str) -> str:
        """The template with the prompt in place of ``{prompt}``."""
        return self.template.replace("{prompt}", prompt)

    def render(self, question: str, num_images: int) -> str:
        """The chat-template text of one user turn (``num_images`` images, then the question)."""
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def inputs(self, texts: list[str], images: list) -> dict[str, Any]:
        """The processor's left-padded batch on the judge's device (floats in the judge's dtype).

        ``images``: one PIL image per text, or a list of images per text (several images per prompt).
        """
        import torch

        try:
            inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        except (ValueError, TypeError, IndexError) as exc:
            raise PrefkitError(
                f"the processor of {self.model_id!r} cannot take these inputs ({type(exc).__name__}: {exc})"
            ) from exc
        return {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }

    def first_token_probs(self, texts: list[str], images: list) -> Any:
        """(len(texts), vocab) float32 probabilities of the first answer token, one forward pass.

        ``images``: one PIL image per text, or a list of images per text (several images per prompt).
        """
        import torch

        inputs = self.inputs(texts, images)
        with torch.no_grad():
            if self.model_type in _PLAIN_ROPE_TYPES:
                mask = inputs["attention_mask"]
                # exactly what generate() uses: left padding does not shift the real tokens' positions
                position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
                logits = self.model(**inputs, position_ids=position_ids, logits_to_keep=1).logits[:, -1, :]
            else:
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=1,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                logits = out.logits[0]
        return torch.softmax(logits.float(), dim=-1).cpu()

    def _answer_ids(self, words: Sequence[str], label: str) -> list[int]:
        ids = answer_token_ids(self.tokenizer, words)
        if not ids:
            raise PrefkitError(
                f"--model {self.model_id!r}: its tokenizer has no single token for the answer {label!r}; "
                "the llava judge reads the answer from the first generated token"
            )
        return ids

    def _base_info(self) -> dict[str, Any]:
        return {
            "name": "llava",
            "model": self.model_id,
            "revision": self.revision,
            "method": self.method,
            "template": self.template,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


# -- VQAScore -------------------------------------------------------------------------------------------


class VQAScoreJudge(_LlavaJudge):
    """P("Yes") to 'Does this image show "{prompt}"?' for each (image, prompt); one image per prompt."""

    method = "vqascore"
    default_template = VQA_TEMPLATE
    default_model = DEFAULT_MODEL

    def _load(self) -> None:
        super()._load()
        self.yes_ids = self._answer_ids(YES_WORDS, "Yes")

    def info(self) -> dict[str, Any]:
        return {
            **self._base_info(),
            "answer_tokens": self.tokenizer.convert_ids_to_tokens(self.yes_ids),
            "answer_token_ids": list(self.yes_ids),
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise PrefkitError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        images = rgb_images(images)
        texts = [self.render(self.question(p), 1) for p in prompts]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            part = slice(start, start + self.batch_size)
            probs = self.first_token_probs(texts[part], images[part])
            out += probs[:, self.yes_ids].sum(dim=-1).tolist()
        return out


# -- pairwise -------------------------------------------------------------------------------------------


def _verdict(p_image0: float, p_image1: float) -> str:
    if p_image0 > p_image1:
        return "0"
    return "1" if p_image1 > p_image0 else "tie"


def _share(p: float, q: float) -> float:
    return p / (p + q) if p + q > 0 else 0.5


class PairwiseJudge(_LlavaJudge):
    """Both images in one prompt, asked in both orders; a verdict only where the two orders agree."""

    method = "pairwise"
    default_template = PAIRWISE_TEMPLATE
    default_model = DEFAULT_PAIRWISE_MODEL

    def check_config(self, config) -> None:
        why = _single_image_model(config)
        if why is not None:
            raise PrefkitError(
                f"--method pairwise: --model {self.model_id!r} is {why}. llava-1.5 was not trained on "
                "several images per prompt, so it cannot compare two images in one prompt. Use "
                "--method vqascore (scores each image alone; pairs come from the scores), or a "
                "multi-image model such as llava-hf/llava-interleave-qwen-7b-hf or "
                "llava-hf/llava-onevision-qwen2-7b-ov-hf."
            )

    def _load(self) -> None:
        super()._load()
        self.one_ids = self._answer_ids(PAIR_WORDS["1"], "1")
        self.two_ids = self._answer_ids(PAIR_WORDS["2"], "2")
        if set(self.one_ids) & set(self.two_ids):  # pragma: no cover - would need a strange tokenizer
            raise PrefkitError(f"--model {self.model_id!r}: the answers 1 and 2 share tokens")

    def info(self) -> dict[str, Any]:
        tokens = self.tokenizer.convert_ids_to_tokens
        return {
            **self._base_info(),
            "answer_tokens": {"1": tokens(self.one_ids), "2": tokens(self.two_ids)},
            "answer_token_ids": {"1": list(self.one_ids), "2": list(self.two_ids)},
            "orders": "both (kept only where they agree)",
        }

    def answer_probs(self, items: Sequence[tuple[Any, Any, str]]) -> list[tuple[float, float]]:
        """(P("1"), P("2")) of the first answer token for each (first image, second image, prompt)."""
        texts = [self.render(self.question(prompt), 2) for _, _, prompt in items]
        images = [[a, b] for a, b, _ in items]
        out: list[tuple[float, float]] = []
        for start in range(0, len(texts), self.batch_size):
            part = slice(start, start + self.batch_size)
            probs = self.first_token_probs(texts[part], images[part])
            ones = probs[:, self.one_ids].sum(dim=-1).tolist()
            twos = probs[:, self.two_ids].sum(dim=-1).tolist()
            out += list(zip(ones, twos, strict=True))
        return out

    def compare(self, pairs: Sequence[tuple[Any, Any, str]]) -> list[dict[str, Any]]:
        items: list[tuple[Any, Any, str]] = []
        for image_0, image_1, prompt in pairs:
            image_0, image_1 = rgb_images([image_0, image_1])
            items += [(image_0, image_1, prompt), (image_1, image_0, prompt)]
        probs = self.answer_probs(items)
        out = []
        for i in range(len(pairs)):
            (a1, a2), (b1, b2) = probs[2 * i], probs[2 * i + 1]
            first = _verdict(a1, a2)  # image 0 shown first: "1" names image 0
            swapped = _verdict(b2, b1)  # image 0 shown second: "2" names image 0
            agree = first == swapped
            score_0 = (_share(a1, a2) + _share(b2, b1)) / 2
            out.append(
                {
                    "choice": first if agree else None,
                    "order_swapped_agree": agree,
                    "choice_first_order": first,
                    "choice_swapped": swapped,
                    "p_first_order": {"1": a1, "2": a2},
                    "p_swapped": {"1": b1, "2": b2},
                    "score_0": score_0,
                    "score_1": 1.0 - score_0,
                }
            )
        return out


# -- DDPO's description + BERTScore ---------------------------------------------------------------------


def _bertscore_package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bert-score")
    except PackageNotFoundError:  # pragma: no cover - imported from a source tree
        return "unknown"


class BERTScoreJudge(_LlavaJudge):
    """DDPO's prompt-alignment reward: BERTScore recall of "The image contains {prompt}" against the
    model's greedy description of the image. One image per prompt."""

    method = "bertscore"
    default_template = DESCRIBE_QUESTION
    default_model = DEFAULT_MODEL
    template_needs_prompt = False  # DDPO's question names no prompt; a {prompt} in --template is filled in

    def __init__(self, options) -> None:
        self.bert_model = options.bert_model or DEFAULT_BERT_MODEL
        self.bert_layer = options.bert_layer
        self.max_new_tokens = DESCRIPTION_MAX_TOKENS
        self.last_details: list[dict[str, Any]] = []
        self._check_bert_options()  # before the LLaVA model loads: a bad option fails fast
        super().__init__(options)

    def _load(self) -> None:
        super()._load()
        self._load_bertscore()

    def _bert_hint(self) -> str:
        return (
            "Pass --bert-model with a local folder (a BERT-like encoder and its tokenizer, save_pretrained "
            f"output) or a hub id that is downloaded or in the local cache (default {DEFAULT_BERT_MODEL}), "
            "and --bert-layer N for a model bert-score has no tuned layer for."
        )

    def _check_bert_options(self) -> None:
        """The bert-score package is there, --bert-model names a folder that exists (or a hub id), and
        the layer is known: --bert-layer, else bert-score's tuned layer for the model."""
        try:
            from bert_score.utils import model2layers
        except ImportError as exc:
            raise PrefkitError(
                "--method bertscore needs the bert-score package: pip install 'prefkit[bertscore]' "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        name = self.bert_model
        if _looks_local(name) and not Path(name).expanduser().is_dir():
            raise PrefkitError(f"--bert-model {name!r}: no such folder. {self._bert_hint()}")
        layer = self.bert_layer if self.bert_layer is not None else model2layers.get(name)
        if layer is None:
            raise PrefkitError(
                f"--bert-model {name!r}: bert-score has no tuned layer for it; give --bert-layer N "
                "(the hidden state after N encoder layers; 0 is the embeddings)"
            )
        if int(layer) < 0:
            raise PrefkitError(f"--bert-layer {layer}: give 0 (the embeddings) or more layers")
        self.bert_layer = int(layer)

    def _load_bertscore(self) -> None:
        import transformers.utils.logging as t_log
        from bert_score import BERTScorer

        name, layer = self.bert_model, self.bert_layer
        bars = t_log.is_progress_bar_enabled()
        t_log.disable_progress_bar()
        try:
            # DDPO's server: BERTScorer(model, use_fast_tokenizer=True); no idf, no baseline rescaling
            self.bert = BERTScorer(
                model_type=name,
                num_layers=layer,
                use_fast_tokenizer=True,
                device=str(self.device),
                idf=False,
                rescale_with_baseline=False,
            )
        except Exception as exc:  # OSError (not found / offline), AssertionError (layer out of range)...
            raise PrefkitError(
                f"--bert-model {name!r} (layer {layer}): cannot load it for BERTScore: "
                f"{type(exc).__name__}: {exc}\n{self._bert_hint()}"
            ) from exc
        finally:
            if bars:
                t_log.enable_progress_bar()

    def info(self) -> dict[str, Any]:
        return {
            **self._base_info(),
            "reference": BERTSCORE_REFERENCE,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "bertscore": {
                "model": self.bert_model,
                "layer": self.bert_layer,
                "value": "recall",
                "idf": False,
                "rescale_with_baseline": False,
                "package": f"bert-score {_bertscore_package_version()}",
            },
        }

    def describe(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        """The model's greedy description of each image (special tokens dropped, whitespace stripped)."""
        import torch

        images = rgb_images(images)
        texts = [self.render(self.question(p), 1) for p in prompts]
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            part = slice(start, start + self.batch_size)
            inputs = self.inputs(texts[part], images[part])
            with torch.no_grad():
                ids = self.model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = ids[:, inputs["input_ids"].shape[1] :]
            out += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return out

    def bertscore(self, descriptions: Sequence[str], prompts: Sequence[str]) -> list[dict[str, float]]:
        """BERTScore precision, recall and F1 of each description (the candidate) against "The image
        contains {prompt}" (the reference), each pair scored on its own; an empty description scores 0."""
        refs = [BERTSCORE_REFERENCE.replace("{prompt}", p) for p in prompts]
        out = [{"precision": 0.0, "recall": 0.0, "f1": 0.0} for _ in descriptions]
        todo = [i for i, d in enumerate(descriptions) if d.strip()]
        if todo:
            # batch_size 1: one sentence per forward pass and one pair per matching, nothing padded
            p, r, f = self.bert.score([descriptions[i] for i in todo], [refs[i] for i in todo], batch_size=1)
            for j, i in enumerate(todo):
                out[i] = {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j])}
        return out

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise PrefkitError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        descriptions = self.describe(images, prompts)
        values = self.bertscore(descriptions, prompts)
        self.last_details = [{"description": d, **v} for d, v in zip(descriptions, values, strict=True)]
        return [v["recall"] for v in values]
