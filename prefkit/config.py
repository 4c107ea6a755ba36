"""Typed configs: each field documented once; the CLI's help text comes from the same place.

A YAML/JSON ``--config`` file supplies the same keys as the flags (dashes or underscores); flags given
on the command line override it; the resolved config is saved in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError

_FIELD_ARGS = ("default_factory", "init", "repr", "hash", "compare", "kw_only")


def field(default: Any = None, help: str = "", **kw) -> Any:  # noqa: A002 - mirrors typer's name
    """A dataclass field with its help; keyword arguments other than dataclasses.field's go into its
    metadata (e.g. resume=False: may change when a run is resumed)."""
    meta = {"help": help, **{k: kw.pop(k) for k in list(kw) if k not in _FIELD_ARGS}}
    if "default_factory" in kw:
        return dataclasses.field(metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def help_of(cls, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


@dataclasses.dataclass
class GenerateConfig:
    """Settings of ``prefkit generate``. A sample is determined by (model, these settings, prompt, seed)."""

    out: str = field(None, "Output dataset folder (created; must be empty or absent unless --resume).")
    model: str = field(
        "tiny-shapes",
        "Diffusers pipeline: a local folder, a Hub id (OWNER/NAME), or a built-in model: tiny-shapes "
        "[default; trained to draw coloured shapes, SD3-style flow matching], or the random-weight tiny-sd3, "
        "tiny-flux, tiny-sd15, tiny-sdxl (and sd15-random, sd3-medium-random, sdxl-random for benchmarks).",
    )
    revision: str | None = field(None, "Hub revision (branch, tag or commit) of --model.")
    lora: str | None = field(
        None,
        "A LoRA folder saved by prefkit train (OUT/lora or OUT/checkpoint-N) applied to --model: the "
        "trajectories and their log-probs are then the tuned policy's.",
    )
    prompt: list[str] = field(help="A prompt; repeat the flag for several.", default_factory=list)
    prompts: str | None = field(
        None, "A prompt file (UTF-8, one prompt a line, blank lines ignored) or a built-in list: animals."
    )
    samples_per_prompt: int = field(
        4, "Samples per prompt; they form one prompt group (pairs come from a group)."
    )
    steps: int = field(20, "Denoising steps K per trajectory.")
    guidance: float = field(
        5.0, "Classifier-free guidance scale w (1 = off); stored and reused when training."
    )
    negative_prompt: str = field("", "Negative prompt for classifier-free guidance (default: empty prompt).")
    eta: float | None = field(None, "DDIM stochasticity eta > 0 (DDIM models only). Default 1.0.")
    noise_level: float | None = field(
        None, "Flow-SDE noise level a > 0 (flow-matching models only). Default 0.7."
    )
    seed: int = field(0, "Base seed; each image's seed is derived from (seed, group, index) and stored.")
    same_noise: bool = field(False, "Samples of a prompt group share their initial noise x_T (as D3PO does).")
    height: int | None = field(None, "Image height in pixels (default: the model's native size).")
    width: int | None = field(None, "Image width in pixels (default: the model's native size).")
    batch_size: int = field(8, "Images denoised together per forward pass, per process.")
    groups_per_shard: int = field(16, "Prompt groups per shard (a shard holds whole groups).")
    dtype: str = field(
        "auto", "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16."
    )
    store_embeddings: bool = field(
        False,
        "Store prompt embeddings once per group (embeddings/*.safetensors) so training skips the text encoders.",
    )
    resume: bool = field(
        False, "Complete an interrupted run in --out (same settings); finished shards are kept."
    )
    quiet: bool = field(False, "No progress bar.")

    # -- derived ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that determine what gets generated. The batch size is one of them: denoiser kernels are not
# batch-invariant in the last float bit (oneDNN, cuBLAS), so a sample is reproduced bit for bit by re-running
# its batch (see prefkit.generate.regenerate); a sample alone agrees to float rounding.
GENERATE_IDENTITY_KEYS = (
    "model",
    "revision",
    "lora",
    "prompt",
    "prompts",
    "samples_per_prompt",
    "steps",
    "guidance",
    "negative_prompt",
    "eta",
    "noise_level",
    "seed",
    "same_noise",
    "height",
    "width",
    "groups_per_shard",
    "batch_size",
    "dtype",
    "store_embeddings",
)


def load_config_file(path: str | Path, cls) -> dict[str, Any]:
    """Read a YAML or JSON config; keys may use dashes or underscores; unknown keys are an error."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrefkitError(f"--config {path}: no such file") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PrefkitError(
            f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrefkitError(f"--config {path}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise PrefkitError(
                f"--config {path}: unknown key {key!r}; known keys: {', '.join(sorted(n.replace('_', '-') for n in names))}"
            )
        out[name] = check_value(f"--config {path}", key, value, hints[name])
    return out


_KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list of strings",
}


def check_value(source: Any, key: Any, value: Any, hint: Any) -> Any:
    """``value`` if it has the field's type (an int is a float too); else an error naming ``source`` (a
    file, an option) and the key."""
    import types

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
    if value is None and type(None) in args:
        return None
    kind = next((a for a in args if a is not type(None)), hint) if args else hint
    kind = typing.get_origin(kind) or kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise PrefkitError(
            f"{source}: {key}: expected {_KINDS.get(kind, kind.__name__)}"
            f"{' or null' if args else ''}, got {value!r}"
        )
    return value


@dataclasses.dataclass
class LabelConfig:
    """Settings of ``prefkit label``: where pairwise labels come from and how pairs are formed."""

    dataset: str = field(None, "Dataset folder written by `prefkit generate`.")
    source: str = field(
        None,
        "Where labels come from: human (import --input files), annotate (the votes of `prefkit annotate`), "
        "jpeg, shapes, aesthetic, pickscore, llava, or python:module:function (your scorer of (images, prompts) -> scores).",
    )
    input: list[str] = field(
        help="Human label file(s) to import; repeat for several (e.g. one per D3PO annotator).",
        default_factory=list,
    )
    format: str = field(
        "auto",
        "Format of --input: auto (from extension and content), prefkit (JSONL), pickapic, d3po, csv, labelstudio, "
        "annotate (an annotations.sqlite).",
    )
    name: str | None = field(
        None, "Label set name: labels/NAME.jsonl (default: the source, e.g. jpeg, llava, human)."
    )
    pairs: str = field(
        "all", "Pairs within a prompt group: all (C(n,2), D3PO), best-worst (Flow-GRPO), vs-best."
    )
    tie_margin: float = field(0.0, "Score differences <= this are ties (label 0.5/0.5), kept in the data.")
    model: str | None = field(
        None,
        "Judge model: hub id or local folder (llava: llava-hf/llava-1.5-7b-hf; pairwise: llava-hf/llava-interleave-qwen-7b-hf).",
    )
    revision: str | None = field(None, "Hub revision of the judge model.")
    processor: str | None = field(
        None, "Processor hub id or folder, where it differs from --model (pickscore)."
    )
    weights: str | None = field(
        None, "Weights file of the judge's head (aesthetic: the LAION MLP, .pth or .safetensors)."
    )
    method: str | None = field(
        None,
        "Judge method: jpeg compressibility|incompressibility; llava vqascore|pairwise (default per judge).",
    )
    template: str | None = field(
        None, "Question template of a VLM judge; {prompt} is replaced by the sample's prompt."
    )
    device: str = field("cpu", "Device of the judge model: cpu, cuda, cuda:1 ...")
    dtype: str = field("float32", "Judge model dtype: float32, float16, bfloat16.")
    batch_size: int = field(8, "Images per judge forward pass.")
    strict: bool = field(
        False, "Contradictory labels (one annotator, two choices for a pair) are an error, not a report."
    )
    overwrite: bool = field(False, "Replace an existing label set of the same name.")
    quiet: bool = field(False, "No progress bar.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LoopConfig:
    """Settings of ``prefkit loop``: rounds of generate (with the current LoRA) -> label -> train, each
    round's data and adapter kept, so that an online method (DDPO, TDPO, ...) runs as offline rounds."""

    out: str = field(None, "Output folder: round-NNN/{data,train}, rounds.jsonl, rewards.png.")
    rounds: int = field(2, "Training rounds R; round R (no training) then measures the last adapter.")
    model: str = field("tiny-shapes", "Base model, as for `prefkit generate --model`.")
    prompt: list[str] = field(help="A prompt; repeat the flag for several.", default_factory=list)
    prompts: str | None = field(None, "A prompt file or a built-in list, as for `prefkit generate`.")
    samples_per_prompt: int = field(8, "Samples per prompt and round.")
    steps: int = field(20, "Denoising steps K per trajectory.")
    guidance: float = field(5.0, "Classifier-free guidance scale w (1 = off).")
    noise_level: float | None = field(None, "Flow-SDE noise level a (flow models). Default 0.7.")
    eta: float | None = field(None, "DDIM eta (DDIM models). Default 1.0.")
    height: int | None = field(None, "Image height in pixels (default: the model's).")
    width: int | None = field(None, "Image width in pixels (default: the model's).")
    seed: int = field(0, "Base seed; round r generates with seed + r and trains with seed + r.")
    generate_batch_size: int = field(8, "Images denoised together when generating.")
    source: str = field(
        "jpeg",
        "Scorer of every round's samples: jpeg, aesthetic, pickscore, llava or python:module:function "
        "(its per-sample scores are the reward).",
    )
    objective: str = field("ddpo", "Training objective of each round: ddpo, tdpo, d3po or dense.")
    max_steps: int = field(20, "Optimizer steps per round.")
    batch_size: int = field(4, "Samples (pairs for d3po/dense) per micro-batch.")
    lr: float = field(3e-4, "AdamW learning rate (DDPO's default 3e-4).")
    kl_coef: float = field(0.0, "DPOK's KL coefficient (see prefkit train --kl-coef).")
    timestep_fraction: float = field(1.0, "Fraction of each trajectory's steps trained on.")
    lora_rank: int = field(4, "LoRA rank r.")
    train_config: str | None = field(
        None,
        "A YAML/JSON file of further `prefkit train` settings (the keys of `prefkit train --config`), "
        "applied to every round.",
    )
    resume: bool = field(False, "Continue in --out: finished rounds (data, labels, training) are kept.")
    quiet: bool = field(False, "No progress bars.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PublishConfig:
    """Settings of ``prefkit publish``: a Hub-ready dataset folder (pairs as parquet, shards, card)."""

    dataset: str = field(None, "Dataset folder written by `prefkit generate`, labelled by `prefkit label`.")
    repo_id: str = field(None, "Hub dataset repository OWNER/NAME (created if absent).")
    labels: str | None = field(
        None, "Label set published as the pairs (default: the only one in DATASET/labels)."
    )
    private: bool = field(False, "Create the repository private (an existing one keeps its visibility).")
    dry_run: bool = field(
        False, "Build the folder and list what would be uploaded, with sizes; no network at all."
    )
    staging: str | None = field(
        None,
        "Folder the Hub-ready copy is built in (default: DATASET/.publish; wiped and rebuilt on every run; "
        "kept afterwards).",
    )
    val_fraction: float = field(
        0.1, "Share of prompts put in the validation split (by prompt, never split); 0 = train only."
    )
    seed: int = field(0, "Seed of the prompt-to-split assignment.")
    license: str = field(
        "other",
        "Hub license id for the card (e.g. cc-by-4.0); default other: the images follow the model's license.",
    )
    quiet: bool = field(False, "No file listing.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AnnotateConfig:
    """Settings of ``prefkit annotate``: the labelling page, or (with ``export``) its votes as a label set."""

    dataset: str = field(
        None, "Dataset folder written by `prefkit generate`; votes go to DATASET/annotations.sqlite."
    )
    host: str = field(
        "127.0.0.1",
        "Address to listen on. Anything but a loopback address needs an access token (--token, or one is "
        "generated and printed).",
    )
    port: int = field(8765, "TCP port (0: any free port; the address is printed).")
    per_pair: int = field(1, "Different annotators who should vote on each pair.")
    token: str | None = field(
        None, "Access token checked on every request (default: none on loopback, generated otherwise)."
    )
    labels: str | None = field(
        None,
        "Annotate only the pairs of this label set (e.g. best-worst pairs of a judge); default: all pairs.",
    )
    lease: float = field(
        300.0, "Seconds a pair handed to an annotator is held for them before others may get it."
    )
    client_leases: int | None = field(
        None,
        "Most pairs one client address may hold at once over all its annotators (each page holds 2). "
        "Default: 20, or a quarter of pairs x per-pair when that is fewer (at least 4). Behind a proxy every "
        "annotator has the proxy's address: set it to 2 x the annotators.",
    )
    export: str | None = field(
        None,
        "Write the votes as label set NAME (labels/NAME.jsonl, as `prefkit label --source annotate`) "
        "instead of serving.",
    )
    overwrite: bool = field(False, "With --export: replace an existing label set of the same name.")
    quiet: bool = field(False, "With --export: print nothing on success.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvalConfig:
    """Settings of ``prefkit eval``: the base model and base + LoRA sampled with the same seeds, scored by a
    judge. Sampler settings left unset come from the training run that produced the LoRA."""

    lora: str = field(
        None,
        "LoRA folder saved by prefkit train: OUT/lora, OUT/checkpoint-N, or the run folder OUT itself "
        "(its lora/); a diffusers LoRA from elsewhere works with --model.",
    )
    out: str | None = field(
        None,
        "Output folder for report.json, samples.jsonl and grid.png (default: OUT/eval for OUT/lora, "
        "OUT/eval-checkpoint-N for a checkpoint, eval-NAME beside any other LoRA folder NAME). "
        "Must be empty or absent unless --overwrite.",
    )
    model: str | None = field(
        None, "Base model (default: the training run's model; required for a LoRA from elsewhere)."
    )
    revision: str | None = field(None, "Hub revision of --model (default: the training run's).")
    prompt: list[str] = field(help="A held-out prompt; repeat the flag for several.", default_factory=list)
    prompts: str | None = field(
        None, "Held-out prompts: a file (UTF-8, one a line) or a built-in list (animals, shapes)."
    )
    samples: int = field(8, "Samples per prompt; base and tuned share each sample's seed.")
    seed: int = field(
        1000,
        "Base seed: sample i of prompt p is seeded from (seed, p, i) as prefkit generate does. The default "
        "1000 keeps the noise apart from datasets generated with generate's default seed 0.",
    )
    steps: int | None = field(None, "Denoising steps (default: the training run's dataset's, else 20).")
    guidance: float | None = field(
        None, "Classifier-free guidance scale (default: the training run's, else 5.0)."
    )
    negative_prompt: str | None = field(
        None, "Negative prompt (default: the training run's, else the empty prompt)."
    )
    eta: float | None = field(None, "DDIM eta > 0 (default: the training run's dataset's, else 1.0).")
    noise_level: float | None = field(
        None, "Flow-SDE noise level > 0 (default: the training run's dataset's, else 0.7)."
    )
    height: int | None = field(None, "Image height in pixels (default: the training run's, else native).")
    width: int | None = field(None, "Image width in pixels (default: the training run's, else native).")
    batch_size: int = field(8, "Images denoised together per forward pass (each of base and tuned).")
    dtype: str = field(
        "auto", "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16."
    )
    device: str = field(
        "auto", "Device of the diffusion model: auto (cuda if available), cpu, cuda, cuda:1 ..."
    )
    source: str | None = field(
        None,
        "The judge: any AI or rule source of prefkit label (jpeg, aesthetic, pickscore, llava, "
        "python:module:function). A scorer scores each image; a pairwise judge compares base with tuned.",
    )
    judge_model: str | None = field(None, "The judge's model, as prefkit label --model.")
    judge_revision: str | None = field(None, "Hub revision of the judge's model.")
    processor: str | None = field(None, "The judge's processor, as prefkit label --processor.")
    weights: str | None = field(None, "The judge head's weights file, as prefkit label --weights.")
    method: str | None = field(None, "The judge's method, as prefkit label --method.")
    template: str | None = field(None, "The judge's question template, as prefkit label --template.")
    judge_device: str | None = field(None, "Device of the judge (default: --device).")
    judge_dtype: str = field("float32", "Judge model dtype: float32, float16, bfloat16.")
    judge_batch_size: int = field(8, "Images (or pairs) per judge call.")
    tie_margin: float | None = field(
        None,
        "Scorer judges: a tuned-minus-base score difference of at most this is a tie (default: the "
        "--tie-margin the training pairs were labelled with, else 0).",
    )
    kl: bool = field(
        True,
        "Estimate the per-step KL of the tuned chain from the base (the tuned chain's log-prob under "
        "the tuned minus the base denoiser): one more denoiser pass per step.",
    )
    overwrite: bool = field(
        False, "Write into a non-empty --out, replacing report.json, samples.jsonl, grid.png."
    )
    quiet: bool = field(False, "No progress bar and no summary table.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
