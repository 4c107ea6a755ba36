"""The LLaVA judge (prefkit.judges.llava) on tiny LLaVA models built in code (prefkit.models.tiny_judges).

VQAScore is checked against an independent computation (the processor's own chat-template tokenisation
with the image inline, one forward pass, and ``generate(max_new_tokens=1, output_scores=True)``), batching
against one-by-one scoring, and the pairwise method's both-orders rule against forced probabilities and one
real run of a multi-image tiny model. The CLI runs end to end on a tiny SD3 dataset. Offline (conftest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefkit.errors import PrefkitError
from prefkit.judges import JudgeOptions, is_pair_judge, make_judge
from prefkit.judges.llava import PAIRWISE_TEMPLATE, VQA_TEMPLATE, PairwiseJudge

PROMPTS = [
    "a cat",
    "a red dog on a big blue background with a tiny zebra",
    "x",
    'a "quoted" {brace} fish',
    "bird",
]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> dict[str, str]:
    """{"llava": llava-1.5-style folder, "interleave": multi-image folder}."""
    from prefkit.models.tiny_judges import build_tiny_llava, build_tiny_llava_interleave

    root = tmp_path_factory.mktemp("judges")
    return {
        "llava": build_tiny_llava(root / "tiny-llava"),
        "interleave": build_tiny_llava_interleave(root / "tiny-llava-interleave"),
    }


@pytest.fixture(scope="module")
def images() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(32, 32), (48, 32), (32, 40), (64, 64), (20, 30)]  # (h, w): resized / cropped to 32 px
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _judge(folder: str, **kw):
    return make_judge(JudgeOptions(source="llava", model=folder, **kw))


@pytest.fixture(scope="module")
def vqa(tiny_llava):
    return _judge(tiny_llava["llava"], batch_size=3)


# -- the tiny models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llava", "interleave"])
def test_tiny_llava_loads_with_auto_classes(name, tiny_llava):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    folder = Path(tiny_llava[name])
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(model, LlavaForConditionalGeneration)
    tok = processor.tokenizer
    for text in ("Yes", " Yes", "No", " No", "yes", " yes", "1", "2"):
        assert len(tok.encode(text, add_special_tokens=False)) == 1, text
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == model.config.image_token_id and image_id in tok.all_special_ids
    assert tok.encode("a <image> b", add_special_tokens=False).count(image_id) == 1
    from PIL import Image

    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (40, 32))], text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == image_id).sum() == 16  # 4 x 4 patches of 8 px
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(tok)


def test_tiny_llava_is_deterministic(tiny_llava, tmp_path):
    from prefkit.models.tiny_judges import build_tiny_llava

    again = Path(build_tiny_llava(tmp_path / "again"))
    for f in Path(tiny_llava["llava"]).iterdir():
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


# -- VQAScore ----------------------------------------------------------------------------------------------


def test_vqascore_matches_an_independent_computation(vqa, tiny_llava, images):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava["llava"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava["llava"]).eval()
    tok = processor.tokenizer
    yes_ids = sorted({tok.encode(t, add_special_tokens=False)[0] for t in ("Yes", " Yes", "yes", " yes")})
    assert sorted(vqa.info()["answer_token_ids"]) == yes_ids
    image, prompt = images[1], PROMPTS[1]
    question = f'Does this image show "{prompt}"? Please answer yes or no.'
    conv = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]
    inputs = processor.apply_chat_template(
        conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert tok.decode(inputs["input_ids"][0, -4:]).endswith("no. ASSISTANT:")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        gen = model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    expected = torch.softmax(logits.float(), -1)[yes_ids].sum().item()
    from_generate = torch.softmax(gen.scores[0][0].float(), -1)[yes_ids].sum().item()
    assert gen.sequences[0, -1].item() == logits.argmax().item()  # the first generated token

    got = vqa.score([image], [prompt])
    assert got == pytest.approx([expected], rel=1e-5, abs=1e-7)
    assert got == pytest.approx([from_generate], rel=1e-5, abs=1e-7)


def test_vqascore_batches_score_as_one_by_one(vqa, tiny_llava, images):
    batched = vqa.score(images, PROMPTS)  # batch_size 3: a batch of 3 (left padded), then 2
    single = _judge(tiny_llava["llava"], batch_size=1).score(images, PROMPTS)
    assert len(batched) == len(images)
    assert all(0.0 <= s <= 1.0 for s in batched)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    assert len(set(batched)) == len(batched)  # different inputs, different scores
    # numpy arrays and non-RGB images are accepted
    gray = [np.asarray(images[0]), images[1].convert("L")]
    assert len(vqa.score(gray, PROMPTS[:2])) == 2
    with pytest.raises(PrefkitError, match="one prompt per image"):
        vqa.score(images, PROMPTS[:2])


def test_vqascore_info_records_the_template(vqa, tiny_llava):
    info = vqa.info()
    assert info["name"] == "llava" and info["method"] == "vqascore"
    assert info["model"] == tiny_llava["llava"] and info["revision"] is None
    assert info["template"] == VQA_TEMPLATE and "{prompt}" in info["template"]
    assert sorted(info["answer_tokens"]) == sorted(["Yes", "ĠYes", "yes", "Ġyes"])
    text = vqa.render(vqa.question('a "cat"'), 1)
    assert text == 'USER: <image>\nDoes this image show "a "cat""? Please answer yes or no. ASSISTANT:'
    assert not is_pair_judge(vqa)

    custom = _judge(tiny_llava["llava"], template="Is this {prompt}? Answer yes or no.")
    assert custom.info()["template"] == "Is this {prompt}? Answer yes or no."
    assert "Is this a dog? Answer" in custom.render(custom.question("a dog"), 1)
    with pytest.raises(PrefkitError, match=r"\{prompt\}"):
        _judge(tiny_llava["llava"], template="Is this good?")


# -- bad options -------------------------------------------------------------------------------------------


def test_missing_or_unknown_model_is_a_clear_error(tmp_path, tiny_llava):
    with pytest.raises(PrefkitError, match=r"--model .*no such folder"):
        _judge(str(tmp_path / "nope"))
    with pytest.raises(PrefkitError, match=r"--model 'nobody-here/no-such-llava'.*cannot load"):
        _judge("nobody-here/no-such-llava")  # offline: not in the cache
    with pytest.raises(PrefkitError, match="--method 'ranking'"):
        _judge(tiny_llava["llava"], method="ranking")
    with pytest.raises(PrefkitError, match="--dtype"):
        _judge(tiny_llava["llava"], dtype="float8")
    with pytest.raises(PrefkitError, match="--model"):
        _judge(str(Path(tiny_llava["llava"]).parent))  # a folder, but no model in it


def test_pairwise_refuses_llava_15(tiny_llava):
    with pytest.raises(PrefkitError, match=r"llava-1.5 was not trained on several images.*--method vqascore"):
        _judge(tiny_llava["llava"], method="pairwise")


# -- pairwise ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairwise(tiny_llava):
    judge = _judge(tiny_llava["interleave"], method="pairwise", batch_size=3)
    assert isinstance(judge, PairwiseJudge) and is_pair_judge(judge)
    return judge


def test_pairwise_keeps_only_verdicts_both_orders_agree_on(pairwise, images, monkeypatch):
    a, b, c, d = images[:4]
    # (P("1"), P("2")) per (first image, second image, prompt), keyed by the prompt and the first image
    forced = {
        ("agree-0", id(a)): (0.7, 0.2),  # a shown first: "1" = a
        ("agree-0", id(b)): (0.3, 0.6),  # a shown second: "2" = a       -> a (image 0) wins
        ("agree-1", id(c)): (0.1, 0.5),  # c first: "2" = d
        ("agree-1", id(d)): (0.8, 0.1),  # d first: "1" = d              -> d (image 1) wins
        ("bias", id(a)): (0.9, 0.1),  # always "1": position bias
        ("bias", id(c)): (0.8, 0.2),  #                                  -> no verdict
    }
    calls = []

    def fake(items):
        calls.append([(p, x is a, y is a) for x, y, p in items])
        return [forced[(p, id(x))] for x, _, p in items]

    monkeypatch.setattr(pairwise, "answer_probs", fake)
    out = pairwise.compare([(a, b, "agree-0"), (c, d, "agree-1"), (a, c, "bias")])
    assert calls[0][:2] == [("agree-0", True, False), ("agree-0", False, True)]  # both orders, in order
    assert [o["choice"] for o in out] == ["0", "1", None]
    assert out[0]["order_swapped_agree"] and out[1]["order_swapped_agree"]
    assert out[2]["order_swapped_agree"] is False
    assert out[2]["p_first_order"] == {"1": 0.9, "2": 0.1} and out[2]["p_swapped"] == {"1": 0.8, "2": 0.2}
    assert (out[2]["choice_first_order"], out[2]["choice_swapped"]) == ("0", "1")
    assert out[0]["score_0"] == pytest.approx((0.7 / 0.9 + 0.6 / 0.9) / 2)
    assert out[0]["score_0"] + out[0]["score_1"] == pytest.approx(1.0)
    assert out[1]["score_0"] < 0.5


def test_pairwise_real_run(pairwise, tiny_llava, images):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    pairs = [(images[0], images[1], "a cat"), (images[2], images[3], PROMPTS[1]), (images[4], images[0], "x")]
    out = pairwise.compare(pairs)
    assert len(out) == 3
    for o in out:
        assert o["choice"] in ("0", "1", "tie", None)
        assert (o["choice"] is not None) == o["order_swapped_agree"]
        for p in (*o["p_first_order"].values(), *o["p_swapped"].values(), o["score_0"]):
            assert 0.0 <= p <= 1.0
    info = pairwise.info()
    assert info["method"] == "pairwise" and info["template"] == PAIRWISE_TEMPLATE
    assert info["answer_tokens"] == {"1": ["1", "Ġ1"], "2": ["2", "Ġ2"]}

    # independent: the second pair in its first order, both images in one prompt
    processor = AutoProcessor.from_pretrained(tiny_llava["interleave"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava["interleave"]).eval()
    question = PAIRWISE_TEMPLATE.replace("{prompt}", PROMPTS[1])
    content = [{"type": "image", "image": images[2]}, {"type": "image", "image": images[3]}]
    conv = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 32  # two images
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].float(), -1)
    ids = info["answer_token_ids"]
    expected = {k: probs[v].sum().item() for k, v in ids.items()}
    assert out[1]["p_first_order"] == pytest.approx(expected, rel=1e-5, abs=1e-7)

    one_by_one = _judge(tiny_llava["interleave"], method="pairwise", batch_size=1).compare(pairs)
    for x, y in zip(out, one_by_one, strict=True):
        assert x["choice"] == y["choice"]
        for key in ("p_first_order", "p_swapped"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6)


# -- end to end through the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tiny_models, tmp_path_factory) -> Path:
    """1 prompt x 3 samples from the tiny SD3, 2 steps."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    out = tmp_path_factory.mktemp("llava-labelled") / "ds"
    args = ["generate", "--out", out, "--model", tiny_models["sd3"], "--prompt", "a cat"]
    args += ["--samples-per-prompt", 3, "--steps", 2, "--quiet"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _read_set(dataset: Path, name: str) -> tuple[list[dict], dict]:
    from prefkit.schemas import validate

    labels = dataset / "labels"
    pairs = [json.loads(line) for line in (labels / f"{name}.jsonl").read_text().splitlines()]
    for i, rec in enumerate(pairs):
        validate(rec, "label", f"{name}.jsonl record {i}")
    meta = json.loads((labels / f"{name}.meta.json").read_text())
    validate(meta, "labelset", f"{name}.meta.json")
    return pairs, meta


def test_label_cli_vqascore_end_to_end(dataset, tiny_llava, cli, vqa):
    from prefkit.label import iter_images

    args = ["label", dataset, "--source", "llava", "--model", tiny_llava["llava"], "--batch-size", 2, "-q"]
    result = cli(args)
    assert result.exit_code == 0, result.output
    pairs, meta = _read_set(dataset, "llava")
    assert len(pairs) == 3  # C(3, 2)
    assert meta["judge"]["template"] == VQA_TEMPLATE and meta["judge"]["method"] == "vqascore"
    scores = {
        json.loads(line)["key"]: json.loads(line)["score"]
        for line in (dataset / "labels" / "llava.scores.jsonl").read_text().splitlines()
    }
    items = list(iter_images(dataset))
    expected = vqa.score([im for _, im, _ in items], [p for _, _, p in items])
    for (key, _, _), e in zip(items, expected, strict=True):
        assert scores[key] == pytest.approx(e, rel=1e-4, abs=1e-6)
    for rec in pairs:
        j = rec["judge"]
        assert j["name"] == "llava" and j["model"] == tiny_llava["llava"]
        assert j["method"] == "vqascore" and j["template"] == VQA_TEMPLATE
        assert (j["score_0"], j["score_1"]) == (scores[rec["key_0"]], scores[rec["key_1"]])
        assert rec["label_0"] == (1.0 if j["score_0"] > j["score_1"] else 0.0)


def test_label_cli_pairwise_end_to_end(dataset, tiny_llava, cli):
    model = tiny_llava["interleave"]
    args = ["label", dataset, "--source", "llava", "--method", "pairwise", "--model", model]
    result = cli([*args, "--name", "llava-pairs", "-q"])
    assert result.exit_code == 0, result.output
    pairs, meta = _read_set(dataset, "llava-pairs")
    assert len(pairs) == 3
    assert meta["judge"]["method"] == "pairwise"
    for rec in pairs:
        j = rec["judge"]
        assert j["method"] == "pairwise" and j["template"] == PAIRWISE_TEMPLATE and j["model"] == model
        assert isinstance(j["order_swapped_agree"], bool) and "p_first_order" in j and "p_swapped" in j
        assert rec["has_label"] == j["order_swapped_agree"]
        if not j["order_swapped_agree"]:
            assert rec["label_0"] == 0.5 and not rec["is_tie"]  # no verdict is not a tie
    unlabelled = sum(not rec["has_label"] for rec in pairs)
    assert meta["counts"]["unlabelled"] == unlabelled
    assert meta["counts"]["ties"] == sum(rec["is_tie"] for rec in pairs)
    assert meta["counts"]["ties"] + meta["counts"]["decided"] + unlabelled == len(pairs)

    bad = cli([*args[:-1], tiny_llava["llava"], "--name", "refused", "-q"])
    assert bad.exit_code == 2
    assert "--method vqascore" in bad.output
