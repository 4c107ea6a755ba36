"""DDPO's prompt-alignment reward (``prefkit label --source llava --method bertscore``) on tiny models built
in code: a llava-1.5-style LLaVA (prefkit.models.tiny_judges.build_tiny_llava) describes the image, a tiny
DeBERTa (build_tiny_deberta) embeds the description and "The image contains {prompt}" for BERTScore.

Checked: the greedy matching this file uses as the independent computation against hand-worked numbers
(and bert-score's own ``greedy_cos_idf`` against the same numbers, so the conventions are the package's);
the scorer's BERTScore against that matching on the encoder's hidden states read directly; the
descriptions against the LLaVA model's own ``generate``; batched against one-by-one scoring; the options'
errors; the CLI end to end; and one ``prefkit train --objective ddpo`` on the labels it wrote. Offline.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import two_prompt_dataset

from prefkit.errors import PrefkitError
from prefkit.judges import JudgeOptions, make_judge
from prefkit.judges.llava import BERTSCORE_REFERENCE, DESCRIBE_QUESTION, BERTScoreJudge

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = 2  # of the tiny DeBERTa's 3

PROMPTS = ["a cat", "a red dog on a big blue background with a tiny zebra", "x", "bird", 'a "quoted" fish']


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from prefkit.models.tiny_judges import build_tiny_deberta, build_tiny_llava

    root = tmp_path_factory.mktemp("bertscore-judges")
    return {"llava": build_tiny_llava(root / "tiny-llava"), "bert": build_tiny_deberta(root / "tiny-deberta")}


@pytest.fixture(scope="module")
def images() -> list:
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = [(32, 32), (48, 32), (32, 40), (64, 64), (20, 30)]  # (h, w): resized / cropped to 32 px
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _judge(tiny, **kw) -> BERTScoreJudge:
    kw = {"method": "bertscore", "bert_model": tiny["bert"], "bert_layer": LAYER, **kw}
    return make_judge(JudgeOptions(source="llava", model=tiny["llava"], **kw))


@pytest.fixture(scope="module")
def judge(tiny) -> BERTScoreJudge:
    return _judge(tiny, batch_size=3)


# -- the independent computation -----------------------------------------------------------------------------


def greedy_prf(cand, ref) -> tuple[float, float, float]:
    """BERTScore of one (candidate, reference) pair from their token embeddings ((n, d) arrays whose first
    and last rows are [CLS] and [SEP]): cosine similarities of every token pair; precision is the mean over
    the candidate's own tokens of their best similarity to any reference token, recall the same the other
    way; [CLS] / [SEP] may be a best match but are not averaged over (weight 0; no idf, no rescaling)."""
    cand = np.asarray(cand, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    cand = cand / np.linalg.norm(cand, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    sim = cand @ ref.T
    p = sim.max(axis=1)[1:-1].mean()
    r = sim.max(axis=0)[1:-1].mean()
    return float(p), float(r), float(2 * p * r / (p + r))


# hand-worked: 2-D embeddings, candidate [CLS] h1 h2 [SEP], reference [CLS] r1 r2 [SEP]
HYP = [[2, 0], [0, 3], [1, 1], [0, -1]]  # unit: (1,0) (0,1) (1,1)/sqrt2 (0,-1)
REF = [[1, 0], [3, 4], [-1, 0], [0, 2]]  # unit: (1,0) (.6,.8) (-1,0) (0,1)
# recall: r1 = (.6,.8): best is h2, (.6+.8)/sqrt2 = 0.98995; r2 = (-1,0): best is 0 (h1, and [SEP] h3)
R_HAND = (1.4 / math.sqrt(2) + 0.0) / 2  # 0.494975
# precision: h1 = (0,1): best is the reference's [SEP] (0,1), 1.0 (a special token is a match); h2: r1, 0.98995
P_HAND = (1.0 + 1.4 / math.sqrt(2)) / 2  # 0.994975
F_HAND = 2 * P_HAND * R_HAND / (P_HAND + R_HAND)


def test_greedy_matching_against_hand_worked_numbers():
    assert greedy_prf(HYP, REF) == pytest.approx((P_HAND, R_HAND, F_HAND), rel=1e-12)


def test_bert_score_greedy_matching_against_the_same_hand_worked_numbers():
    """bert-score's own matching (as BERTScorer.score calls it: weight 0 on [CLS] and [SEP], normalised)."""
    import torch
    from bert_score.utils import greedy_cos_idf

    def stats(emb):
        emb = torch.tensor([emb], dtype=torch.float64)
        return (
            emb,
            torch.ones(1, 4, dtype=torch.bool),
            torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=torch.float64),
        )

    p, r, f = greedy_cos_idf(*stats(REF), *stats(HYP))
    assert (p.item(), r.item(), f.item()) == pytest.approx((P_HAND, R_HAND, F_HAND), rel=1e-12)


# -- the tiny text encoder -----------------------------------------------------------------------------------


def test_tiny_deberta_loads_with_auto_classes(tiny, tmp_path):
    from transformers import AutoModel, AutoTokenizer, DebertaModel, DebertaTokenizer

    from prefkit.models.tiny_judges import build_tiny_deberta

    folder = Path(tiny["bert"])
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2e6
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder)
    assert isinstance(tok, DebertaTokenizer) and isinstance(model, DebertaModel)
    assert model.config.num_hidden_layers == 3 and model.config.relative_attention
    ids = tok.encode("The image contains a cat")
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "The", "Ġimage", "Ġcontains", "Ġa", "Ġcat", "[SEP]"]
    assert tok.decode(tok.encode("héllo 猫", add_special_tokens=False)) == "héllo 猫"  # byte-level: no [UNK]
    again = Path(build_tiny_deberta(tmp_path / "again"))
    for f in folder.iterdir():
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


# -- the scorer -----------------------------------------------------------------------------------------------


def _embeddings(tiny, texts: list[str]) -> list:
    """Hidden states after LAYER encoder layers of the full tiny DeBERTa, one sentence at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["bert"])
    model = AutoModel.from_pretrained(tiny["bert"]).eval()
    out = []
    for text in texts:
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        assert len(hidden) == 4  # embeddings + 3 layers
        out.append(hidden[LAYER][0].numpy())
    return out


CANDIDATES = [
    "a cat on a mat",
    "zebra",
    "A RED DOG with a big blue background",
    "the image contains a tiny zebra and a tiny zebra",
    "ünïcode 猫 and a fish",
]


def test_bertscore_matches_an_independent_computation(judge, tiny):
    prompts = ["a cat", "bird", "a red dog on a big blue background", "zebra", "a fish"]
    refs = [f"The image contains {p}" for p in prompts]
    emb = _embeddings(tiny, CANDIDATES + refs)
    expected = [greedy_prf(emb[i], emb[len(CANDIDATES) + i]) for i in range(len(CANDIDATES))]

    got = judge.bertscore(CANDIDATES, prompts)
    # float32 model in both; bert-score runs the encoder cut to LAYER layers, the reference reads layer LAYER
    # of the full encoder: the same arithmetic, so agreement to float32 rounding
    for g, (p, r, f) in zip(got, expected, strict=True):
        assert (g["precision"], g["recall"], g["f1"]) == pytest.approx((p, r, f), rel=1e-5, abs=1e-6)
    assert len({round(g["recall"], 6) for g in got}) == len(got)  # different pairs, different scores

    # each pair is scored as it is alone: bert-score's batched matching (its default, padding shorter
    # sentences) gives padding a similarity of 0, which beats a reference token whose similarities to the
    # candidate are all negative ("zebra" against "bird" in the random encoder), so its recall moves with the batch
    _, batched_r, _ = judge.bert.score(CANDIDATES, refs)
    cand, ref = emb[1], emb[len(CANDIDATES) + 1]
    sim = (cand / np.linalg.norm(cand, axis=1, keepdims=True)) @ (
        ref / np.linalg.norm(ref, axis=1, keepdims=True)
    ).T
    assert sim.max(axis=0)[1:-1].min() < 0
    assert batched_r[1].item() > got[1]["recall"] + 1e-3

    # an empty description scores 0 (bert-score's rule; the package itself fails on one with transformers 5)
    assert (
        judge.bertscore(["", "  "], ["a cat", "a dog"]) == [{"precision": 0.0, "recall": 0.0, "f1": 0.0}] * 2
    )


def test_descriptions_match_the_models_own_generate(judge, tiny, images):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny["llava"])
    model = AutoModelForImageTextToText.from_pretrained(tiny["llava"]).eval()
    expected = []
    for image in images[:2]:
        conv = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": DESCRIBE_QUESTION}],
            }
        ]
        inputs = processor.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=64)
        new = ids[0, inputs["input_ids"].shape[1] :]
        assert len(new) <= 64
        expected.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    got = judge.describe(images[:2], PROMPTS[:2])
    assert got == expected
    assert all(got) and got[0] != got[1]


def test_score_is_the_recall_of_the_description_and_batches_as_one_by_one(judge, tiny, images):
    scores = judge.score(images, PROMPTS)  # batch_size 3: a batch of 3 (left padded), then 2
    details = judge.last_details
    descriptions = [d["description"] for d in details]
    assert descriptions == judge.describe(images, PROMPTS)
    assert scores == [d["recall"] for d in details]
    refs = [BERTSCORE_REFERENCE.replace("{prompt}", p) for p in PROMPTS]
    emb = _embeddings(tiny, descriptions + refs)
    for i, s in enumerate(scores):
        assert s == pytest.approx(greedy_prf(emb[i], emb[len(PROMPTS) + i])[1], rel=1e-5, abs=1e-6)

    single = _judge(tiny, batch_size=1)
    one_by_one = [single.score([im], [p])[0] for im, p in zip(images, PROMPTS, strict=True)]
    assert [d["description"] for d in single.last_details] == descriptions[-1:]
    # left padding moves the LLaVA's float32 logits by ~1e-6: the greedy descriptions are the same here
    np.testing.assert_allclose(scores, one_by_one, rtol=1e-5, atol=1e-6)
    with pytest.raises(PrefkitError, match="one prompt per image"):
        judge.score(images, PROMPTS[:2])


def test_info_records_the_question_reference_and_bert_model(judge, tiny):
    info = judge.info()
    assert info["name"] == "llava" and info["method"] == "bertscore" and info["model"] == tiny["llava"]
    assert info["template"] == DESCRIBE_QUESTION == "Answer concisely: what is going on in this image?"
    assert info["reference"] == "The image contains {prompt}"
    assert info["decoding"] == "greedy" and info["max_new_tokens"] == 64
    bs = info["bertscore"]
    assert (bs["model"], bs["layer"], bs["value"]) == (tiny["bert"], LAYER, "recall")
    assert bs["idf"] is False and bs["rescale_with_baseline"] is False
    assert bs["package"].startswith("bert-score ")
    json.dumps(info)  # goes into every label
    text = judge.render(judge.question("a cat"), 1)
    assert text == "USER: <image>\nAnswer concisely: what is going on in this image? ASSISTANT:"


def test_options_and_their_errors(tiny, tmp_path, monkeypatch):
    custom = _judge(tiny, template="Describe {prompt}?")  # a {prompt} in the question is filled in
    assert custom.render(custom.question("a cat"), 1) == "USER: <image>\nDescribe a cat? ASSISTANT:"
    with pytest.raises(PrefkitError, match=r"--bert-model .*no such folder"):
        _judge(tiny, bert_model=str(tmp_path / "nope"))
    with pytest.raises(PrefkitError, match=r"no tuned layer for it; give --bert-layer"):
        _judge(tiny, bert_layer=None)
    with pytest.raises(PrefkitError, match=r"--bert-layer -1"):
        _judge(tiny, bert_layer=-1)
    with pytest.raises(PrefkitError, match=r"layer 7\): cannot load it"):
        _judge(tiny, bert_layer=7)  # 3 layers
    # the defaults are DDPO's: BERTScorer("microsoft/deberta-xlarge-mnli", use_fast_tokenizer=True), with
    # bert-score's tuned layer for it (40), no idf, no rescaling (a stand-in records what it is given: no load)
    import bert_score

    given = {}
    monkeypatch.setattr(bert_score, "BERTScorer", lambda **kw: given.update(kw))
    default = _judge(tiny, bert_model=None, bert_layer=None, device="cpu")
    assert given == {
        "model_type": "microsoft/deberta-xlarge-mnli",
        "num_layers": 40,
        "use_fast_tokenizer": True,
        "device": "cpu",
        "idf": False,
        "rescale_with_baseline": False,
    }
    assert default.info()["bertscore"]["model"] == "microsoft/deberta-xlarge-mnli"
    assert default.info()["bertscore"]["layer"] == 40
    monkeypatch.undo()
    with pytest.raises(PrefkitError, match="--method 'bert'"):
        _judge(tiny, method="bert")
    monkeypatch.setitem(sys.modules, "bert_score.utils", None)
    with pytest.raises(PrefkitError, match=r"pip install 'prefkit\[bertscore\]'"):
        _judge(tiny)


def test_eval_and_loop_pass_the_bert_options_to_the_judge():
    from prefkit.config import EvalConfig, LoopConfig
    from prefkit.label import judge_label_config, judge_options

    for cls in (EvalConfig, LoopConfig):
        cfg = cls(source="llava", method="bertscore", bert_model="/m/bert", bert_layer=3)
        options = judge_options(judge_label_config(cfg, "cpu"))
        assert (options.method, options.bert_model, options.bert_layer) == ("bertscore", "/m/bert", 3), cls


# -- end to end through the CLI, and DDPO on the labels ------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tiny_models, tiny, tmp_path_factory):
    """The two-prompt dataset (tiny SD3, 2 x 3 samples) labelled through the real CLI."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    data = two_prompt_dataset(tmp_path_factory.mktemp("bertscore") / "ds", tiny_models["sd3"])
    args = ["label", str(data), "--source", "llava", "--method", "bertscore", "--model", tiny["llava"]]
    args += ["--bert-model", tiny["bert"], "--bert-layer", str(LAYER), "--batch-size", "4", "--name", "align"]
    result = CliRunner().invoke(app, [*args, "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data


def test_label_cli_end_to_end(labelled, judge):
    from prefkit.label import iter_images
    from prefkit.schemas import validate

    labels = labelled / "labels"
    pairs = [json.loads(line) for line in (labels / "align.jsonl").read_text().splitlines()]
    meta = json.loads((labels / "align.meta.json").read_text())
    validate(meta, "labelset", "align.meta.json")
    assert len(pairs) == 2 * 3  # C(3, 2) per prompt
    scores = {}
    for line in (labels / "align.scores.jsonl").read_text().splitlines():
        rec = json.loads(line)
        validate(rec, "score", "align.scores.jsonl")
        scores[rec["key"]] = rec["score"]
    items = list(iter_images(labelled))
    assert len(scores) == len(items) == 6
    expected = judge.score([im for _, im, _ in items], [p for _, _, p in items])  # batch 3 vs the CLI's 4
    for (key, _, _), e in zip(items, expected, strict=True):
        assert scores[key] == pytest.approx(e, rel=1e-5, abs=1e-6)
    info = meta["judge"]
    assert info["method"] == "bertscore" and info["bertscore"]["layer"] == LAYER
    for i, rec in enumerate(pairs):
        validate(rec, "label", f"align.jsonl record {i}")
        j = rec["judge"]
        assert j["bertscore"]["model"] == info["bertscore"]["model"] and j["reference"] == BERTSCORE_REFERENCE
        assert (j["score_0"], j["score_1"]) == (scores[rec["key_0"]], scores[rec["key_1"]])


def test_ddpo_trains_on_the_bertscore_labels(labelled, tmp_path, cli):
    out = tmp_path / "ddpo"
    args = ["train", labelled, "--labels", "align", "--objective", "ddpo", "--out", out]
    result = cli([*args, "--max-steps", 2, "--batch-size", 2, "--checkpoint-every", 0, "-q"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    scores = [
        json.loads(x)["score"] for x in (labelled / "labels" / "align.scores.jsonl").read_text().splitlines()
    ]
    # the rewards are the recalls: a batch's mean score lies within their range (a batch of 2 of the 6)
    lo, hi = min(scores), max(scores)
    assert all(lo - 1e-6 <= m["score_mean"] <= hi + 1e-6 for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "ddpo" and summary["labels"]["samples"] == 6
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
