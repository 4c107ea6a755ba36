"""``prefkit generate``: sample trajectories with per-step log-probs and write them as shards.

Reads top to bottom: resolve and validate settings (nothing written on bad input), load the pipeline,
plan the shards, sample the shards this process owns, finish the manifest.

Plan. Prompt p (in the order given) is prompt group p; it has ``samples_per_prompt`` samples.
Shard j holds groups [j * G, (j + 1) * G). Under ``accelerate launch --num_processes N`` process r
writes the shards j with j % N == r, so the union of the processes' shards is exactly the
single-process dataset (every sample depends only on its own seed). ``--resume`` skips finished
shards; a killed run leaves at most an unfinished file in ``.partial/``, which is discarded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from prefkit import __version__
from prefkit.config import GENERATE_IDENTITY_KEYS, GenerateConfig
from prefkit.errors import PrefkitError
from prefkit.families import DTYPES, resolve_model
from prefkit.fileio import check_output_folder, jsonable, utc_timestamp, write_yaml
from prefkit.math.logprob import LP_REDUCTION
from prefkit.progress import progress
from prefkit.prompts import resolve_prompts
from prefkit.shards import (
    MANIFEST,
    PARTIAL_DIR,
    SHARD_PATTERN,
    atomic_write_bytes,
    finished_shards,
    group_key,
    json_bytes,
    npy_bytes,
    png_bytes,
    read_manifest,
    sample_key,
    write_shard,
)

FORMAT_NAME = "prefkit-trajectories"
FORMAT_VERSION = 1


def derive_seed(base: int, group: int, index: int | str) -> int:
    """A 63-bit seed for (base seed, group, sample index): stable across versions and machines."""
    digest = hashlib.sha256(f"prefkit/{base}/{group}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_seeds(cfg: GenerateConfig, group: int, index: int) -> tuple[int, int]:
    """(seed of the image's generator, seed of its initial noise)."""
    seed = derive_seed(cfg.seed, group, index)
    init = derive_seed(cfg.seed, group, "init") if cfg.same_noise else seed
    return seed, init


def validate_numbers(cfg: GenerateConfig) -> None:
    for name in ("samples_per_prompt", "steps", "batch_size", "groups_per_shard"):
        if getattr(cfg, name) < 1:
            raise PrefkitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.guidance < 0:
        raise PrefkitError(f"--guidance {cfg.guidance}: must be >= 0 (1 turns guidance off)")
    if cfg.eta is not None and cfg.noise_level is not None:
        raise PrefkitError("give --eta (DDIM models) or --noise-level (flow models), not both")
    for name in ("eta", "noise_level"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise PrefkitError(
                f"--{name.replace('_', '-')} {value}: must be > 0; a deterministic step has no density, "
                "so no log-probability could be recorded"
            )
    if cfg.dtype not in ("auto", *DTYPES):
        raise PrefkitError(f"--dtype {cfg.dtype}: choose auto, {', '.join(DTYPES)}")


def check_out_dir(out: Path, resume: bool) -> None:
    hint = "pass --resume to complete an interrupted run there, or choose a new folder"
    if check_output_folder(out, allow=resume, hint=hint) and not (out / MANIFEST).is_file():
        raise PrefkitError(
            f"--out {out}: --resume, but the folder has no {MANIFEST}; it is not a prefkit dataset"
        )


def resolve_sampler(cfg: GenerateConfig, family) -> tuple[str, float]:
    """('eta' | 'noise_level', value) with the per-family default; a wrong-family flag is an error."""
    if family.noise_flag == "eta":
        if cfg.noise_level is not None:
            raise PrefkitError("--noise-level applies to flow-matching models; this DDIM model takes --eta")
        return "eta", family.default_noise if cfg.eta is None else cfg.eta
    if cfg.eta is not None:
        raise PrefkitError(f"--eta applies to DDIM models; this {family.name} flow model takes --noise-level")
    return "noise_level", family.default_noise if cfg.noise_level is None else cfg.noise_level


def guidance_mode(family, guidance: float) -> str:
    if getattr(family, "embedded_guidance", False):
        return "embedded"
    return "cfg" if guidance > 1 else "none"


@dataclasses.dataclass
class Setup:
    """A loaded pipeline and the settings resolved against it (defaults filled in)."""

    cfg: GenerateConfig  # resolved: height, width, dtype, eta / noise_level filled in
    pipe: Any
    family: Any
    settings: Any  # prefkit.sampling.SamplerSettings
    prompts: list[str]
    noise_name: str

    @property
    def identity(self) -> dict[str, Any]:
        return {k: getattr(self.cfg, k) for k in GENERATE_IDENTITY_KEYS}


def setup(cfg: GenerateConfig, device) -> Setup:
    """Validate ``cfg``, load its model and resolve the defaults that depend on the model."""
    from prefkit.families import family_of, load_pipeline
    from prefkit.sampling import SamplerSettings

    validate_numbers(cfg)
    prompts = resolve_prompts(cfg.prompt, cfg.prompts)
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    pipe = load_pipeline(cfg.model, cfg.revision, DTYPES[dtype_name], device, lora=cfg.lora)
    family = family_of(pipe)
    noise_name, noise = resolve_sampler(cfg, family)
    dh, dw = family.default_size()
    height, width = cfg.height or dh, cfg.width or dw
    family.check_size(height, width)
    settings = SamplerSettings(
        steps=cfg.steps,
        guidance=cfg.guidance,
        noise=noise,
        height=height,
        width=width,
        negative_prompt=cfg.negative_prompt,
    )
    lora = str(Path(cfg.lora).expanduser().resolve()) if cfg.lora else None  # found from any directory
    resolved = dataclasses.replace(
        cfg, height=height, width=width, dtype=dtype_name, lora=lora, **{noise_name: noise}
    )
    return Setup(resolved, pipe, family, settings, prompts, noise_name)


def process_state(device: str = "auto"):
    """accelerate's ``PartialState`` for this process, on the CPU where it must be or where ``device``
    (--device) says so (prefkit.distributed)."""
    from accelerate import PartialState

    from prefkit.distributed import check_world, launch_world

    world, cpu = launch_world(device)
    state = PartialState(cpu=cpu)
    check_world(state.num_processes, world)
    return state


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate (or complete, with ``cfg.resume``) the dataset in ``cfg.out``; returns the manifest."""
    # 1. settings: everything that can be checked without writing ------------------------------------
    if not cfg.out:
        raise PrefkitError("--out is required: the dataset folder to write")
    out = Path(cfg.out).expanduser()
    validate_numbers(cfg)
    resolve_prompts(cfg.prompt, cfg.prompts)
    check_out_dir(out, cfg.resume)
    state = process_state(cfg.device)
    su = setup(cfg, state.device)
    pipe, family, settings, prompts, noise_name = su.pipe, su.family, su.settings, su.prompts, su.noise_name
    noise, height, width, dtype_name = settings.noise, settings.height, settings.width, su.cfg.dtype
    c, h, w = family.latent_shape(height, width)
    identity = su.identity
    if cfg.resume and (out / MANIFEST).is_file():
        check_resume(out, identity, prompts)

    num_groups = len(prompts)
    num_shards = math.ceil(num_groups / cfg.groups_per_shard)
    model_info = {
        "id": cfg.model,
        # a local folder's absolute path, so that training finds it from another working directory
        "path": str(Path(resolve_model(cfg.model)).resolve())
        if Path(resolve_model(cfg.model)).is_dir()
        else None,
        "revision": cfg.revision,
        "family": family.name,
        "pipeline_class": type(pipe).__name__,
        "dtype": dtype_name,
        **family.scheduler_info(),
        "scheduler_config": dict(pipe.scheduler.config),
    }
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "prefkit_version": __version__,
        "status": "in_progress",
        "created_at": utc_timestamp(),
        "completed_at": None,
        "settings": identity,
        "model": model_info,
        "sampler": {
            "kind": family.sampler_kind,
            noise_name: noise,
            "guidance_mode": guidance_mode(family, cfg.guidance),
            "lp_reduction": LP_REDUCTION,
            "latent_dtype": "float16",
            "latent_shape": [cfg.steps + 1, c, h, w],
        },
        "plan": {
            "num_groups": num_groups,
            "samples_per_prompt": cfg.samples_per_prompt,
            "groups_per_shard": cfg.groups_per_shard,
            "num_shards": num_shards,
            "num_samples": num_groups * cfg.samples_per_prompt,
            "shard_pattern": SHARD_PATTERN,
        },
        "files": sample_files(family.sampler_kind),
        "prompts": prompts,
        "counts": None,
    }

    # 2. the folder and its manifest (main process) -----------------------------------------------------
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MANIFEST).is_file():
            atomic_write_bytes(out / MANIFEST, json_bytes(jsonable(manifest)))
        # the resolved config, loadable again with --config (TRL habit); the manifest is the authority
        write_yaml(out / "config.yaml", {k: v for k, v in su.cfg.to_dict().items() if k != "resume"})
    state.wait_for_everyone()
    manifest = read_manifest(out)

    # 3. this process's shards --------------------------------------------------------------------------
    mine = [j for j in range(num_shards) if j % state.num_processes == state.process_index]
    for j in mine:  # a killed run may have left unfinished files of shards this process owns
        for stale in (out / PARTIAL_DIR).glob(f"{Path(SHARD_PATTERN % j).stem}*"):
            stale.unlink()
    todo = [j for j in mine if not (out / (SHARD_PATTERN % j)).is_file()]
    record_base = {
        "model_id": cfg.model,
        "model_revision": cfg.revision,
        "family": family.name,
        "pipeline_class": type(pipe).__name__,
        "scheduler_class": type(pipe.scheduler).__name__,
        "model_dtype": dtype_name,
        "steps": cfg.steps,
        "eta": noise if noise_name == "eta" else None,
        "noise_level": noise if noise_name == "noise_level" else None,
        "guidance_scale": cfg.guidance,
        "guidance_mode": manifest["sampler"]["guidance_mode"],
        "negative_prompt": cfg.negative_prompt,
        "height": height,
        "width": width,
        "latent_dtype": "float16",
        "latent_shape": [cfg.steps + 1, c, h, w],
        "lp_reduction": LP_REDUCTION,
        "same_noise": cfg.same_noise,
        "prefkit_version": __version__,
    }
    total = sum(len(_shard_groups(j, cfg, num_groups)) for j in todo) * cfg.samples_per_prompt
    with progress(state.is_main_process and not cfg.quiet, total, "generate", "trajectories") as advance:
        for j in todo:
            samples, embeddings = [], {}
            for batch in shard_batches(j, cfg, num_groups):
                seeds, traj = sample_batch(family, settings, cfg, prompts, batch)
                for b, (g, i) in enumerate(batch):
                    record = {
                        **record_base,
                        "key": sample_key(g, i),
                        "prompt": prompts[g],
                        "group_id": g,
                        "sample_index": i,
                        "seed": seeds[b][0],
                        "init_noise_seed": seeds[b][1],
                    }
                    samples.append(encode_sample(record, traj, b, family.sampler_kind))
                    if cfg.store_embeddings and i == 0:
                        embeddings.update(_group_embeddings(g, traj.cond, b))
                advance(len(batch))
            if cfg.store_embeddings:
                embeddings.update(_negative_embeddings(traj.cond))
                _write_embeddings(out, j, embeddings)
            write_shard(out, j, samples)

    # 4. finish -------------------------------------------------------------------------------------------
    state.wait_for_everyone()
    if state.is_main_process:
        shards = finished_shards(out)
        if len(shards) != num_shards:
            raise PrefkitError(
                f"{out}: expected {num_shards} shards, found {len(shards)}; run again with --resume"
            )
        manifest["status"] = "complete"
        manifest["completed_at"] = utc_timestamp()
        manifest["counts"] = {
            "shards": num_shards,
            "samples": num_groups * cfg.samples_per_prompt,
            "groups": num_groups,
            "processes_last_run": state.num_processes,
        }
        atomic_write_bytes(out / MANIFEST, json_bytes(jsonable(manifest)))
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
        write_preview(out)
    state.wait_for_everyone()
    return manifest


def regenerate(folder: str | Path, key: str, alone: bool = False, device=None):
    """Re-sample the sample ``key`` of a dataset from its manifest's settings.

    By default the sample's whole batch is re-run, which reproduces it bit for bit. ``alone=True``
    samples it by itself: bit-identical with ``--batch-size 1`` datasets (and wherever the kernels
    are batch-invariant), otherwise equal to float rounding. Returns (latents [K+1, C, h, w] float16,
    logprobs [K], PIL image).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    cfg = GenerateConfig(out=str(folder), **manifest["settings"])
    cfg.prompt, cfg.prompts = manifest["prompts"], None
    su = setup(cfg, device or torch.device("cpu"))
    g, i = (int(part[1:]) for part in key.split("_"))
    j = g // cfg.groups_per_shard
    batch = next(b for b in shard_batches(j, cfg, len(su.prompts)) if (g, i) in b)
    if alone:
        batch = [(g, i)]
    _, traj = sample_batch(su.family, su.settings, su.cfg, su.prompts, batch)
    b = batch.index((g, i))
    return traj.latents[b].to(torch.float16), traj.logprobs[b], traj.images[b]


def sample_files(sampler_kind: str) -> list[str]:
    files = ["latents.npy", "timesteps.npy", "logprobs.npy", "png", "json"]
    if sampler_kind != "ddim":  # a flow schedule's sigmas (DDIM's alphas follow from the timesteps)
        files.insert(2, "sigmas.npy")
    return files


def check_resume(out: Path, identity: dict[str, Any], prompts: list[str]) -> None:
    """Refuse to resume with other settings, or other prompt texts (a prompt file edited in between)."""
    manifest = read_manifest(out)
    old = manifest.get("settings", {})
    new = jsonable(identity)
    diff = [k for k in new if old.get(k) != new[k]]
    shown = [f"{k}: was {old.get(k)!r}, now {new[k]!r}" for k in diff]
    if manifest.get("prompts") != prompts:
        old_prompts = manifest.get("prompts") or []
        pairs = enumerate(zip(old_prompts, prompts, strict=False))
        first = next((g for g, (a, b) in pairs if a != b), min(len(old_prompts), len(prompts)))
        shown.append(
            f"prompts: the prompt texts differ ({len(old_prompts)} prompts before, {len(prompts)} now; "
            f"first difference at prompt {first + 1})"
        )
    if shown:
        raise PrefkitError(
            f"--resume {out}: settings differ from the interrupted run ({'; '.join(shown)}); use the same ones"
        )


def _shard_groups(j: int, cfg: GenerateConfig, num_groups: int) -> range:
    return range(j * cfg.groups_per_shard, min((j + 1) * cfg.groups_per_shard, num_groups))


def shard_batches(j: int, cfg: GenerateConfig, num_groups: int) -> list[list[tuple[int, int]]]:
    """The batches of (group, sample index) that make shard j, in order: a function of the settings."""
    items = [(g, i) for g in _shard_groups(j, cfg, num_groups) for i in range(cfg.samples_per_prompt)]
    return [items[s : s + cfg.batch_size] for s in range(0, len(items), cfg.batch_size)]


def sample_batch(family, settings, cfg: GenerateConfig, prompts: list[str], batch: list[tuple[int, int]]):
    """Sample one batch of (group, index) pairs; returns ([(seed, init_seed)], TrajectoryBatch)."""
    from prefkit.sampling import sample

    seeds = [sample_seeds(cfg, g, i) for g, i in batch]
    traj = sample(
        family,
        [prompts[g] for g, _ in batch],
        [s for s, _ in seeds],
        settings,
        init_seeds=[s for _, s in seeds],
    )
    return seeds, traj


def encode_sample(record: dict[str, Any], traj, b: int, sampler_kind: str) -> dict[str, Any]:
    """The shard member files of sample ``b`` of ``traj`` (its latents, timesteps, log-probs, sigmas for
    flow models, PNG and ``record`` as JSON), keyed as :func:`prefkit.shards.write_shard` takes them."""
    files: dict[str, Any] = {
        "__key__": record["key"],
        "latents.npy": npy_bytes(traj.latents[b].to(torch.float16).numpy()),
        "timesteps.npy": npy_bytes(traj.schedule.timesteps.numpy()),
        "logprobs.npy": npy_bytes(traj.logprobs[b].float().numpy()),
        "png": png_bytes(traj.images[b]),
        "json": json_bytes(record),
    }
    if sampler_kind != "ddim":
        files["sigmas.npy"] = npy_bytes(traj.schedule.sigmas.float().numpy())
    return files


def _group_embeddings(group: int, cond, b: int) -> dict[str, torch.Tensor]:
    gk = group_key(group)
    pe = cond.prompt_embeds[b]
    if cond.prompt_mask is not None:  # a batch padded to its longest prompt: store this prompt's own tokens
        pe = pe[cond.prompt_mask[b].bool()]
    out = {f"{gk}.prompt_embeds": pe}
    if cond.pooled is not None:
        out[f"{gk}.pooled"] = cond.pooled[b]
    return out


def _negative_embeddings(cond) -> dict[str, torch.Tensor]:
    out = {}
    if cond.negative_prompt_embeds is not None:
        out["negative.prompt_embeds"] = cond.negative_prompt_embeds[0]
    if cond.negative_pooled is not None:
        out["negative.pooled"] = cond.negative_pooled[0]
    if cond.text_ids is not None:
        out["text_ids"] = cond.text_ids
    return out


def _write_embeddings(out: Path, j: int, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    folder = out / "embeddings"
    folder.mkdir(exist_ok=True)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(folder / f"{Path(SHARD_PATTERN % j).stem}.safetensors", data)


PREVIEW = "preview.png"
PREVIEW_GROUPS, PREVIEW_SAMPLES = 32, 8  # preview.png: the first prompt groups, and the first samples of each
# preview.png's cells: an image's long side is reduced to 128 px (small images are enlarged by an integer
# factor to at least 128), so 32 groups x 8 samples of any model are at most 1060 x 4692 px
PREVIEW_CELL = 128


def write_preview(
    out: Path, max_groups: int = PREVIEW_GROUPS, max_per_group: int = PREVIEW_SAMPLES
) -> Path | None:
    """preview.png, for people to look at: a row per prompt group (the first ``max_groups``) of its first
    ``max_per_group`` images, the prompt above it, drawn by :func:`prefkit.grid.image_grid` (cells of
    PREVIEW_CELL px whatever the model's size; a footer says how many groups are not shown). Reading stops
    after the last row shown; only the images shown are decoded."""
    import json

    from prefkit.grid import image_grid
    from prefkit.shards import iter_samples, load_png, shard_spec

    plan = read_manifest(out)["plan"]
    num_groups, per_group = plan["num_groups"], plan["samples_per_prompt"]
    spec = shard_spec(out)
    rows: dict[int, list] = {}
    titles: dict[int, str] = {}
    for raw in iter_samples(out, decode=False, fields=["png", "json"]):
        rec = json.loads(raw["json"])
        g = rec["group_id"]
        if g not in rows:
            if len(rows) == max_groups:
                break
            rows[g], titles[g] = [], rec["prompt"]
        if len(rows[g]) < max_per_group:
            rows[g].append(load_png(raw["png"], spec, f"{out}: {raw['__key__']}.png"))
    if not rows:
        return None
    more = num_groups - len(rows)
    left_out = (
        f"{more} more prompt group(s) not shown: the preview shows the first {len(rows)}"
        if more > 0
        else None
    )
    # "[8 of 12]" before the prompt, which is cut to the row's width
    some = f" [{max_per_group} of {per_group}]" if per_group > max_per_group else ""
    heads = [f"{g}{some}: {titles[g]}" for g in rows]
    path = out / PREVIEW
    atomic_write_bytes(
        path, png_bytes(image_grid(list(rows.values()), heads, left_out=left_out, largest=PREVIEW_CELL))
    )
    return path
