"""Typed configs: each field documented once; the CLI's help text comes from the same place.

A YAML/JSON ``--config`` file supplies the same keys as the flags (dashes or underscores); flags given
on the command line override it; the resolved config is saved in the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.prompts import builtin_lists


def field(
    default: Any = None,
    help: str = "",  # noqa: A002 - mirrors typer's name
    *,
    flags: tuple[str, ...] | None = None,
    argument: bool | None = None,
    panel: str | None = None,
    path: bool | None = None,
    identity: bool | None = None,
    resume: bool | None = None,
    aliases: tuple[str, ...] | None = None,
    required: bool | None = None,
    **kw,
) -> Any:
    """A config field, declared once: its type and default (the dataclass's), its help, and how the
    command line shows it (read by prefkit.cli.builder, which makes one option per field):

    - ``flags``: the option's names, e.g. ``("--quiet", "-q")`` or ``("--kl/--no-kl",)`` (default
      ``--field-name``; a bool is then an on-only flag);
    - ``argument``: a positional argument instead (required when the default is None, unless
      ``required=False``);
    - ``panel``: the rich help panel the option is listed under (default: Options);
    - ``path``: the command line shows and parses it as a path (the config still holds a str);
    - ``identity``: False leaves the field out of ``keys_of(cls, "identity")``, the settings a resumed
      run must share (``GENERATE_IDENTITY_KEYS``). A field says so only to be left out: a new one is checked;
    - ``resume``: False lets the field change when a training run is resumed (``RESUME_KEYS``);
    - ``aliases``: old spellings of the option, accepted (hidden, with a note) for one release, also as
      ``--config`` keys.
    """
    meta: dict[str, Any] = {"help": help}
    given = {
        "flags": flags,
        "argument": argument,
        "panel": panel,
        "path": path,
        "identity": identity,
        "resume": resume,
        "aliases": aliases,
        "required": required,
    }
    meta.update({k: v for k, v in given.items() if v is not None})
    if "default_factory" in kw:
        return dataclasses.field(metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def help_of(cls, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


def keys_of(cls, key: str, default: bool = True) -> tuple[str, ...]:
    """The names of ``cls``'s fields whose metadata ``key`` is true, in field order; a field that does not
    set it counts as ``default`` (True: a field is in unless it says otherwise)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(key, default))


@dataclasses.dataclass
class GenerateConfig:
    """Settings of ``prefkit generate``. A sample is determined by (model, these settings, prompt, seed)."""

    out: str = field(
        None,
        "Output dataset folder (created; must be empty or absent unless --resume).",
        path=True,
        panel="Output",
        identity=False,
    )
    model: str = field(
        "tiny-shapes",
        "Diffusers pipeline: a local folder, a Hub id (OWNER/NAME), or a built-in model: tiny-shapes "
        "[default; trained to draw coloured shapes, SD3-style flow matching], or the random-weight tiny-sd3, "
        "tiny-flux, tiny-sd15, tiny-sdxl, tiny-qwen-image, tiny-z-image (and sd15-random, sd3-medium-random, "
        "sdxl-random, qwen-image-random, z-image-turbo-random for benchmarks).",
        panel="Input",
    )
    revision: str | None = field(None, "Hub revision (branch, tag or commit) of --model.", panel="Input")
    lora: str | None = field(
        None,
        "A LoRA folder saved by prefkit train (OUT/lora or OUT/checkpoint-N) applied to --model: the "
        "trajectories and their log-probs are then the tuned policy's.",
        panel="Input",
    )
    prompt: list[str] = field(
        help="A prompt; repeat the flag for several.", default_factory=list, panel="Input"
    )
    prompts: str | None = field(
        None,
        "A prompt file (UTF-8, one prompt a line, blank lines ignored) or a built-in list: "
        + ", ".join(builtin_lists())
        + ".",
        panel="Input",
    )
    samples_per_prompt: int = field(
        4, "Samples per prompt; they form one prompt group (pairs come from a group).", panel="Sampler"
    )
    steps: int = field(20, "Denoising steps K per trajectory.", panel="Sampler")
    guidance: float = field(
        5.0, "Classifier-free guidance scale w (1 = off); stored and reused when training.", panel="Sampler"
    )
    negative_prompt: str = field(
        "", "Negative prompt for classifier-free guidance (default: empty prompt).", panel="Sampler"
    )
    eta: float | None = field(
        None, "DDIM stochasticity eta > 0 (DDIM models only). Default 1.0.", panel="Sampler"
    )
    noise_level: float | None = field(
        None, "Flow-SDE noise level a > 0 (flow-matching models only). Default 0.7.", panel="Sampler"
    )
    seed: int = field(
        0, "Base seed; each image's seed is derived from (seed, group, index) and stored.", panel="Sampler"
    )
    same_noise: bool = field(
        False, "Samples of a prompt group share their initial noise x_T (as D3PO does).", panel="Sampler"
    )
    height: int | None = field(
        None, "Image height in pixels (default: the model's native size).", panel="Sampler"
    )
    width: int | None = field(
        None, "Image width in pixels (default: the model's native size).", panel="Sampler"
    )
    batch_size: int = field(8, "Images denoised together per forward pass, per process.", panel="Run")
    groups_per_shard: int = field(16, "Prompt groups per shard (a shard holds whole groups).", panel="Output")
    dtype: str = field(
        "auto",
        "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16.",
        panel="Run",
    )
    device: str = field(
        "auto",
        "Where the model runs: auto (CUDA when present, else the CPU), cpu or cuda; several GPUs: accelerate launch.",
        panel="Run",
        identity=False,
    )
    store_embeddings: bool = field(
        False,
        "Store prompt embeddings once per group (embeddings/*.safetensors) so training skips the text encoders.",
        panel="Output",
    )
    resume: bool = field(
        False,
        "Complete an interrupted run in --out (same settings); finished shards are kept.",
        panel="Run",
        identity=False,
    )
    quiet: bool = field(False, "No progress bar.", flags=("--quiet", "-q"), panel="Run", identity=False)

    # -- derived ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that determine what gets generated: every field of GenerateConfig but those marked
# identity=False (out, resume, quiet), so that a new setting is checked on --resume unless it says otherwise.
# The batch size is one of them: denoiser kernels are not batch-invariant in the last float bit (oneDNN,
# cuBLAS), so a sample is reproduced bit for bit by re-running its batch (see prefkit.generate.regenerate); a
# sample alone agrees to float rounding. The manifest's "settings" (schemas/manifest.schema.json) are these keys.
GENERATE_IDENTITY_KEYS = keys_of(GenerateConfig, "identity")


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
    old = {  # old spellings (a field's aliases) -> the field
        a.lstrip("-").replace("-", "_"): f.name
        for f in dataclasses.fields(cls)
        for a in f.metadata.get("aliases", ())
    }
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = old.get(name, name) if name not in names else name
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
    if isinstance(value, str) and kind in (int, float):
        # YAML 1.1 reads 1e-3 (no dot) as a string: a number written as text is taken as the number
        with contextlib.suppress(ValueError):
            value = kind(value.strip())
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

    dataset: str = field(None, "Dataset folder written by `prefkit generate`.", argument=True)
    source: str = field(
        None,
        "Where labels come from: human (import --input files), annotate (the votes of `prefkit annotate`), "
        "jpeg, shapes, aesthetic, pickscore, hps, imagereward, llava, or python:module:function (your scorer of (images, prompts) -> scores).",
        panel="Source",
    )
    input: list[str] = field(
        help="Human label file(s) to import; repeat for several (e.g. one per D3PO annotator).",
        default_factory=list,
        panel="Source",
    )
    format: str = field(
        "auto",
        "Format of --input: auto (from extension and content), prefkit (JSONL), pickapic, d3po, csv, labelstudio, "
        "annotate (an annotations.sqlite).",
        panel="Source",
    )
    name: str | None = field(
        None,
        "Label set name: labels/NAME.jsonl (default: the source, e.g. jpeg, llava, human).",
        panel="Label set",
    )
    pairs: str = field(
        "all",
        "Pairs within a prompt group: all (C(n,2), D3PO), best-worst (Flow-GRPO), vs-best.",
        panel="Label set",
    )
    tie_margin: float = field(
        0.0, "Score differences <= this are ties (label 0.5/0.5), kept in the data.", panel="Label set"
    )
    judge_model: str | None = field(
        None,
        "Judge model: hub id or local folder (llava: llava-hf/llava-1.5-7b-hf; pairwise: llava-hf/llava-interleave-qwen-7b-hf; "
        "hps: xswu/HPSv2; imagereward: THUDM/ImageReward).",
        panel="Judge",
        aliases=("--model",),
    )
    judge_revision: str | None = field(
        None, "Hub revision of the judge model.", panel="Judge", aliases=("--revision",)
    )
    processor: str | None = field(
        None,
        "Processor hub id or folder, where it differs from --judge-model (pickscore; hps: the CLIP config and tokenizer; imagereward: the tokenizer).",
        panel="Judge",
    )
    weights: str | None = field(
        None,
        "Weights file of the judge (aesthetic: the LAION MLP, .pth or .safetensors; hps: HPS_v2.1_compressed.pt; "
        "imagereward: ImageReward.pt).",
        panel="Judge",
    )
    method: str | None = field(
        None,
        "Judge method: jpeg compressibility|incompressibility; llava vqascore|pairwise|bertscore (default per judge).",
        panel="Judge",
    )
    template: str | None = field(
        None, "Question template of a VLM judge; {prompt} is replaced by the sample's prompt.", panel="Judge"
    )
    bert_model: str | None = field(
        None,
        "llava --method bertscore: BERTScore's text encoder, hub id or local folder (default "
        "microsoft/deberta-xlarge-mnli, as DDPO).",
        panel="Judge",
    )
    bert_layer: int | None = field(
        None,
        "llava --method bertscore: the encoder layer whose hidden states BERTScore matches (default: "
        "bert-score's tuned layer for --bert-model, 40 for deberta-xlarge-mnli).",
        panel="Judge",
    )
    device: str = field(
        "auto",
        "Device of the judge model: auto (CUDA when present, else the CPU), cpu, cuda, cuda:1 ...",
        panel="Judge",
    )
    dtype: str = field("float32", "Judge model dtype: float32, float16, bfloat16.", panel="Judge")
    batch_size: int = field(8, "Images per judge forward pass.", panel="Judge")
    strict: bool = field(
        False,
        "Contradictory labels (one annotator, two choices for a pair) are an error, not a report.",
        panel="Run",
    )
    overwrite: bool = field(False, "Replace an existing label set of the same name.", panel="Run")
    quiet: bool = field(False, "No progress bar.", flags=("--quiet", "-q"), panel="Run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LoopConfig:
    """Settings of ``prefkit loop``: rounds of generate (with the current LoRA) -> label -> train, each
    round's data and adapter kept, so that an online method (DDPO, TDPO, ...) runs as offline rounds."""

    # A setting that only hands a stage its own default on takes it from that stage's config (model, steps,
    # guidance, generate_batch_size: GenerateConfig's); the others are the loop's own choices (rounds,
    # samples_per_prompt, seed, source, objective, max_steps, batch_size, lr). kl_coef, timestep_fraction and
    # lora_rank default to None: prefkit train's own default (TrainConfig, which this foundation module
    # cannot import), or the model folder's recommendation.

    out: str = field(
        None, "Output folder: round-NNN/{data,train}, rounds.jsonl, rewards.png.", path=True, panel="Rounds"
    )
    rounds: int = field(
        2, "Training rounds R; round R (no training) then measures the last adapter.", panel="Rounds"
    )
    model: str = field(
        GenerateConfig.model, "Base model, as for `prefkit generate --model`.", panel="Generate"
    )
    prompt: list[str] = field(
        help="A prompt; repeat the flag for several.", default_factory=list, panel="Generate"
    )
    prompts: str | None = field(
        None,
        "A prompt file or a built-in list (" + ", ".join(builtin_lists()) + "), as for `prefkit generate`.",
        panel="Generate",
    )
    samples_per_prompt: int = field(8, "Samples per prompt and round.", panel="Generate")
    steps: int = field(GenerateConfig.steps, "Denoising steps K per trajectory.", panel="Generate")
    guidance: float = field(
        GenerateConfig.guidance, "Classifier-free guidance scale w (1 = off).", panel="Generate"
    )
    noise_level: float | None = field(
        None, "Flow-SDE noise level a (flow models). Default 0.7.", panel="Generate"
    )
    eta: float | None = field(None, "DDIM eta (DDIM models). Default 1.0.", panel="Generate")
    height: int | None = field(None, "Image height in pixels (default: the model's).", panel="Generate")
    width: int | None = field(None, "Image width in pixels (default: the model's).", panel="Generate")
    seed: int = field(
        0, "Base seed; round r generates with seed + r and trains with seed + r.", panel="Rounds"
    )
    generate_batch_size: int = field(
        GenerateConfig.batch_size, "Images denoised together when generating.", panel="Generate"
    )
    source: str = field(
        "jpeg",
        "Scorer of every round's samples: jpeg, aesthetic, pickscore, hps, imagereward, llava or python:module:function "
        "(its per-sample scores are the reward).",
        panel="Label",
    )
    # the judge's options, as prefkit label's (checked before round 0)
    judge_model: str | None = field(None, "The judge's model, as prefkit label --judge-model.", panel="Label")
    judge_revision: str | None = field(None, "Hub revision of the judge's model.", panel="Label")
    processor: str | None = field(None, "The judge's processor, as prefkit label --processor.", panel="Label")
    weights: str | None = field(
        None, "The judge head's weights file, as prefkit label --weights.", panel="Label"
    )
    method: str | None = field(None, "The judge's method, as prefkit label --method.", panel="Label")
    template: str | None = field(
        None, "The judge's question template, as prefkit label --template.", panel="Label"
    )
    bert_model: str | None = field(
        None, "The BERTScore encoder of llava bertscore, as prefkit label --bert-model.", panel="Label"
    )
    bert_layer: int | None = field(
        None, "The BERTScore layer of llava bertscore, as prefkit label --bert-layer.", panel="Label"
    )
    judge_device: str | None = field(None, "Device of the judge (default: --device).", panel="Label")
    judge_dtype: str = field("float32", "Judge model dtype: float32, float16, bfloat16.", panel="Label")
    judge_batch_size: int = field(8, "Images per judge forward pass.", panel="Label")
    tie_margin: float = field(
        0.0,
        "Score differences <= this are ties (d3po/dense pairs), as prefkit label --tie-margin.",
        panel="Label",
    )
    objective: str = field(
        "ddpo", "Training objective of each round: ddpo, tdpo, d3po or dense.", panel="Train"
    )
    max_steps: int = field(20, "Optimizer steps per round.", panel="Train")
    batch_size: int = field(4, "Samples (pairs for d3po/dense) per micro-batch.", panel="Train")
    lr: float = field(3e-4, "AdamW learning rate (DDPO's default 3e-4).", panel="Train")
    kl_coef: float | None = field(
        None, "DPOK's KL coefficient (see prefkit train --kl-coef; default: train's).", panel="Train"
    )
    timestep_fraction: float | None = field(
        None, "Fraction of each trajectory's steps trained on (default: train's).", panel="Train"
    )
    lora_rank: int | None = field(None, "LoRA rank r (default: train's).", panel="Train")
    train_config: str | None = field(
        None,
        "A YAML/JSON file of further `prefkit train` settings (the keys of `prefkit train --config`), "
        "applied to every round.",
        panel="Train",
    )
    base_line: bool = field(
        True,
        "Also sample and score the base model on each round's seeds and prompts (round-NNN/base): "
        "rounds.jsonl's paired gain and rewards.png's base line tell training from the seeds' luck.",
        flags=("--base-line/--no-base-line",),
        panel="Rounds",
    )
    device: str = field(
        "auto",
        "Where the model runs: auto (CUDA when present, else the CPU), cpu or cuda; several GPUs: accelerate launch.",
        panel="Run",
    )
    resume: bool = field(
        False, "Continue in --out: finished rounds (data, labels, training) are kept.", panel="Run"
    )
    quiet: bool = field(False, "No progress bars.", flags=("--quiet", "-q"), panel="Run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PublishConfig:
    """Settings of ``prefkit publish``: a Hub-ready dataset folder (pairs as parquet, shards, card), or with
    ``lora`` a trained LoRA as a model repository (weights, model card, eval grid)."""

    dataset: str = field(
        None,
        "Dataset folder written by `prefkit generate`, labelled by `prefkit label` (not with --lora).",
        argument=True,
        required=False,
    )
    lora: str | None = field(
        None,
        "Publish a LoRA of `prefkit train` as a MODEL repository instead: the run folder OUT, OUT/lora or "
        "OUT/checkpoint-N (with a model card from the run's settings, metrics and eval report).",
        panel="Content",
    )
    repo_id: str = field(
        None,
        "Hub repository OWNER/NAME (created if absent): a dataset repository, with --lora a model one.",
        panel="Hub",
    )
    labels: str | None = field(
        None, "Label set published as the pairs (default: the only one in DATASET/labels).", panel="Content"
    )
    private: bool = field(
        False, "Create the repository private (an existing one keeps its visibility).", panel="Hub"
    )
    dry_run: bool = field(
        False, "Build the folder and list what would be uploaded, with sizes; no network at all.", panel="Run"
    )
    staging: str | None = field(
        None,
        "Folder the Hub-ready copy is built in (default: DATASET/.publish, with --lora OUT/.publish; wiped "
        "and rebuilt on every run; kept afterwards).",
        panel="Run",
    )
    val_fraction: float = field(
        0.1,
        "Share of prompts put in the validation split (by prompt, never split); 0 = train only.",
        panel="Content",
    )
    seed: int = field(0, "Seed of the prompt-to-split assignment.", panel="Content")
    license: str = field(
        "other",
        "Hub license id for the card (e.g. cc-by-4.0); default other: the images (and a LoRA) follow the "
        "model's license.",
        panel="Content",
    )
    base_model: str | None = field(
        None,
        "--lora: the Hub id OWNER/NAME of the base model, for the card's base_model (default: the training "
        "run's model when that is a Hub id; a local folder is not one).",
        panel="Content",
    )
    quiet: bool = field(False, "No file listing.", flags=("--quiet", "-q"), panel="Run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# what the annotation page asks when no --question is given (and what it asked before the question could be
# set: votes stored before prefkit recorded the question are taken to have been given under this one)
DEFAULT_QUESTION = "Which image follows the prompt better and looks better?"


@dataclasses.dataclass
class AnnotateConfig:
    """Settings of ``prefkit annotate``: the labelling page, or (with ``export``) its votes as a label set."""

    dataset: str = field(
        None,
        "Dataset folder written by `prefkit generate`; votes go to DATASET/annotations.sqlite.",
        argument=True,
    )
    host: str = field(
        "127.0.0.1",
        "Address to listen on. Anything but a loopback address needs an access token (--token, or one is "
        "generated and printed).",
        panel="Server",
    )
    port: int = field(8765, "TCP port (0: any free port; the address is printed).", panel="Server")
    per_pair: int = field(1, "Different annotators who should vote on each pair.", panel="Pairs")
    token: str | None = field(
        None,
        "Access token checked on every request (default: none on loopback, generated otherwise).",
        panel="Server",
    )
    labels: str | None = field(
        None,
        "Annotate only the pairs of this label set (e.g. best-worst pairs of a judge); default: all pairs.",
        panel="Pairs",
    )
    lease: float = field(
        300.0,
        "Seconds a pair handed to an annotator is held for them before others may get it.",
        panel="Server",
    )
    client_leases: int | None = field(
        None,
        "Most pairs one client address may hold at once over all its annotators (each page holds 2). "
        "Default: 20, or a quarter of pairs x per-pair when that is fewer (at least 4). Behind a proxy every "
        "annotator has the proxy's address: set it to 2 x the annotators.",
        panel="Server",
    )
    question: str = field(
        DEFAULT_QUESTION,
        "The question the page asks about each pair (one line, at most 300 characters), e.g. 'Which "
        "image follows the prompt more closely?'. Stored with every vote. A store with votes under another "
        "question is refused unless --force-question.",
        panel="Page",
    )
    guidelines: str | None = field(
        None,
        "A Markdown file of guidelines shown beside the pair (paragraphs, headings, **bold**, *italic*, "
        "lists, http(s) links; anything else, HTML included, is shown as text). Its SHA-256 is stored with "
        "every vote, its text once in the database.",
        panel="Page",
        path=True,
    )
    force_question: bool = field(
        False,
        "Serve even though the store has votes under another --question: new votes are stored with the new "
        "question, old ones keep theirs (the export counts the votes per question).",
        panel="Page",
    )
    export: str | None = field(
        None,
        "Write the votes as label set NAME (labels/NAME.jsonl, as `prefkit label --source annotate`) "
        "instead of serving.",
        panel="Export",
    )
    overwrite: bool = field(
        False, "With --export: replace an existing label set of the same name.", panel="Export"
    )
    quiet: bool = field(
        False, "With --export: print nothing on success.", flags=("--quiet", "-q"), panel="Export"
    )

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
        panel="Model",
    )
    out: str | None = field(
        None,
        "Output folder for report.json, samples.jsonl and grid.png (default: OUT/eval for OUT/lora, "
        "OUT/eval-checkpoint-N for a checkpoint, eval-NAME beside any other LoRA folder NAME). "
        "Must be empty or absent unless --overwrite.",
        path=True,
        panel="Output",
    )
    model: str | None = field(
        None,
        "Base model (default: the training run's model; required for a LoRA from elsewhere).",
        panel="Model",
    )
    revision: str | None = field(
        None, "Hub revision of --model (default: the training run's).", panel="Model"
    )
    prompt: list[str] = field(
        help="A held-out prompt; repeat the flag for several.", default_factory=list, panel="Prompts"
    )
    prompts: str | None = field(
        None,
        "Held-out prompts: a file (UTF-8, one a line) or a built-in list: "
        + ", ".join(builtin_lists())
        + ".",
        panel="Prompts",
    )
    samples_per_prompt: int = field(
        8,
        "Samples per prompt; base and tuned share each sample's seed.",
        panel="Prompts",
        aliases=("--samples",),
    )
    seed: int = field(
        1000,
        "Base seed: sample i of prompt p is seeded from (seed, p, i) as prefkit generate does. The default "
        "1000 keeps the noise apart from datasets generated with generate's default seed 0.",
        panel="Prompts",
    )
    steps: int | None = field(
        None, "Denoising steps (default: the training run's dataset's, else 20).", panel="Sampler"
    )
    guidance: float | None = field(
        None, "Classifier-free guidance scale (default: the training run's, else 5.0).", panel="Sampler"
    )
    negative_prompt: str | None = field(
        None, "Negative prompt (default: the training run's, else the empty prompt).", panel="Sampler"
    )
    eta: float | None = field(
        None, "DDIM eta > 0 (default: the training run's dataset's, else 1.0).", panel="Sampler"
    )
    noise_level: float | None = field(
        None, "Flow-SDE noise level > 0 (default: the training run's dataset's, else 0.7).", panel="Sampler"
    )
    height: int | None = field(
        None, "Image height in pixels (default: the training run's, else native).", panel="Sampler"
    )
    width: int | None = field(
        None, "Image width in pixels (default: the training run's, else native).", panel="Sampler"
    )
    batch_size: int = field(
        8, "Images denoised together per forward pass (each of base and tuned).", panel="Sampler"
    )
    dtype: str = field(
        "auto",
        "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16.",
        panel="Sampler",
    )
    device: str = field(
        "auto",
        "Device of the diffusion model: auto (cuda if available), cpu, cuda, cuda:1 ...",
        panel="Sampler",
    )
    source: str | None = field(
        None,
        "The judge: any AI or rule source of prefkit label (jpeg, aesthetic, pickscore, hps, imagereward, llava, "
        "python:module:function). A scorer scores each image; a pairwise judge compares base with tuned.",
        panel="Judge",
    )
    judge_model: str | None = field(None, "The judge's model, as prefkit label --model.", panel="Judge")
    judge_revision: str | None = field(None, "Hub revision of the judge's model.", panel="Judge")
    processor: str | None = field(None, "The judge's processor, as prefkit label --processor.", panel="Judge")
    weights: str | None = field(
        None, "The judge head's weights file, as prefkit label --weights.", panel="Judge"
    )
    method: str | None = field(None, "The judge's method, as prefkit label --method.", panel="Judge")
    template: str | None = field(
        None, "The judge's question template, as prefkit label --template.", panel="Judge"
    )
    bert_model: str | None = field(
        None, "The BERTScore encoder of llava bertscore, as prefkit label --bert-model.", panel="Judge"
    )
    bert_layer: int | None = field(
        None, "The BERTScore layer of llava bertscore, as prefkit label --bert-layer.", panel="Judge"
    )
    judge_device: str | None = field(None, "Device of the judge (default: --device).", panel="Judge")
    judge_dtype: str = field("float32", "Judge model dtype: float32, float16, bfloat16.", panel="Judge")
    judge_batch_size: int = field(8, "Images (or pairs) per judge call.", panel="Judge")
    tie_margin: float | None = field(
        None,
        "Scorer judges: a tuned-minus-base score difference of at most this is a tie (default: the "
        "--tie-margin the training pairs were labelled with, else 0).",
        panel="Judge",
    )
    # the gold judge: a second judge that training never saw (prefkit.evaluate.gold_config builds it
    # exactly as the judge above, on --judge-device, --judge-dtype and --judge-batch-size)
    gold: str | None = field(
        None,
        "A second judge that training never saw (any source --source takes, e.g. shapes): it scores base "
        "and tuned too, and the report compares the proxy's gain (--source) with the gold gain and flags "
        "reward hacking (proxy up, gold down, both significant).",
        panel="Gold judge",
    )
    gold_model: str | None = field(
        None, "The gold judge's model, as prefkit label --judge-model.", panel="Gold judge"
    )
    gold_revision: str | None = field(None, "Hub revision of the gold judge's model.", panel="Gold judge")
    gold_processor: str | None = field(
        None, "The gold judge's processor, as prefkit label --processor.", panel="Gold judge"
    )
    gold_weights: str | None = field(
        None, "The gold judge head's weights file, as prefkit label --weights.", panel="Gold judge"
    )
    gold_method: str | None = field(
        None, "The gold judge's method, as prefkit label --method.", panel="Gold judge"
    )
    gold_template: str | None = field(
        None, "The gold judge's question template, as prefkit label --template.", panel="Gold judge"
    )
    gold_tie_margin: float = field(
        0.0,
        "Gold scorer: a tuned-minus-base gold score difference of at most this is a tie (its wins and "
        "losses, and which samples the grid marks as 'gold fell').",
        panel="Gold judge",
    )
    kl: bool = field(
        True,
        "Estimate the per-step KL of the tuned chain from the base (the tuned chain's log-prob under "
        "the tuned minus the base denoiser): one more denoiser pass per step.",
        flags=("--kl/--no-kl",),
        panel="Output",
    )
    overwrite: bool = field(
        False, "Write into a non-empty --out, replacing report.json, samples.jsonl, grid.png.", panel="Output"
    )
    quiet: bool = field(
        False, "No progress bar and no summary table.", flags=("--quiet", "-q"), panel="Output"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BenchConfig:
    """Settings of ``prefkit bench``: what to time, on which model and device."""

    what: str = field(
        "all",
        "What to measure: generate (overhead, bytes on disk), train (step cost vs a bare loop, stored vs "
        "live, read throughput, peak memory), all, or gpu (all of it on the real-size models in bfloat16 on "
        "CUDA, with the environment, into --json; --dry-run: tiny models on the CPU).",
        argument=True,
    )
    model: str = field("tiny-sd3", "Model, as for generate.", panel="Workload")
    device: str = field("cpu", "cpu or cuda.", panel="Workload")
    steps: int = field(20, "Denoising steps per trajectory (training: max(2, steps // 2)).", panel="Workload")
    batch_size: int = field(
        8, "Images per generation batch (training: max(1, batch // 4) pairs per step).", panel="Workload"
    )
    repeats: int = field(5, "Interleaved measurements per side; medians are reported.", panel="Measurement")
    dtype: str = field(
        "auto",
        "Model dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16.",
        panel="Workload",
    )
    height: int | None = field(
        None, "Image height in pixels (default: the model's native size).", panel="Workload"
    )
    width: int | None = field(
        None, "Image width in pixels (default: the model's native size).", panel="Workload"
    )
    json_out: str | None = field(
        None,
        "Also write the figures as JSON here (bench gpu: default bench-gpu.json).",
        flags=("--json",),
        path=True,
        panel="Measurement",
    )
    dry_run: bool = field(
        False, "bench gpu only: run the same code on the CPU with tiny models, 1 repeat.", panel="Measurement"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
