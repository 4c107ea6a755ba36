"""The files ``prefkit generate`` writes, read back the way users read them.

One small dataset per model family is generated once for the module through the real CLI, then read
with plain ``webdataset``, with ``datasets.load_dataset("webdataset", ...)``, with numpy (no pickle),
with safetensors, and checked against the JSON Schemas in schemas/ and docs/formats.md.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

wds = pytest.importorskip("webdataset")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from prefkit.errors import PrefkitError  # noqa: E402
from prefkit.schemas import schema_dir, validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["ddim", "sd3", "flux"]
FLOW = {"sd3", "flux"}
PROMPTS = ["a red cube", "a cat on a mat", "zèbre café ünïcode"]
SAMPLES = 2
STEPS = 3
GROUPS_PER_SHARD = 2
NUM_SHARDS = 2  # ceil(3 groups / 2 per shard)
# (height, width); None = the model's native size. Non-square sizes catch height/width swaps.
SIZES = {"ddim": (32, 48), "sd3": (None, None), "flux": (48, 32)}
NATIVE = (32, 32)  # the tiny sd3's native size
SHARED = "sd3"  # generated with --same-noise --store-embeddings; the others with neither
FORBIDDEN_SUFFIXES = (".pkl", ".pickle", ".pyd", ".pt", ".pth")
ISSUE_FLAGS = [
    "--out",
    "--model",
    "--prompt",
    "--prompts",
    "--samples-per-prompt",
    "--steps",
    "--guidance",
    "--eta",
    "--noise-level",
    "--seed",
    "--same-noise",
    "--height",
    "--width",
    "--batch-size",
    "--resume",
    "--config",
    "--store-embeddings",
    "--quiet",
]


def _invoke(args: list[str]):
    """What the conftest ``cli`` fixture does (that fixture is function-scoped; ours run once per module)."""
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _size(family: str) -> tuple[int, int]:
    h, w = SIZES[family]
    return (h or NATIVE[0], w or NATIVE[1])


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(scope="module")
def generated(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """{family: dataset folder}: 3 prompts x 2 samples, 3 steps, 2 groups per shard (2 shards)."""
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for family in FAMILIES:
        folder = root / family
        args = ["generate", "--out", folder, "--model", tiny_models[family], "--quiet"]
        for p in PROMPTS:
            args += ["--prompt", p]
        args += ["--samples-per-prompt", SAMPLES, "--steps", STEPS, "--groups-per-shard", GROUPS_PER_SHARD]
        args += ["--batch-size", 3]  # batches straddle prompt groups
        h, w = SIZES[family]
        if h is not None:
            args += ["--height", h, "--width", w]
        if family == SHARED:
            args += ["--same-noise", "--store-embeddings"]
        result = _invoke(args)
        assert result.exit_code == 0, result.output
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def raw_samples(generated) -> dict[str, list[dict]]:
    """{family: [raw sample]} read with plain ``webdataset.WebDataset`` (bytes per file), in order."""
    out = {}
    for family, folder in generated.items():
        shards = sorted(str(p) for p in folder.glob("shard-*.tar"))
        out[family] = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
    return out


@pytest.fixture(scope="module")
def decoded(raw_samples) -> dict[str, list[dict]]:
    """{family: [{"key", "record", "latents", "timesteps", "sigmas"?, "logprobs", "image"}]}."""
    out = {}
    for family, samples in raw_samples.items():
        rows = []
        for s in samples:
            row = {
                "key": s["__key__"],
                "record": json.loads(s["json"]),
                "image": Image.open(io.BytesIO(s["png"])),
            }
            for name in ("latents", "timesteps", "sigmas", "logprobs"):
                if f"{name}.npy" in s:
                    row[name] = _npy(s[f"{name}.npy"])
            rows.append(row)
        out[family] = rows
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _by_group(rows: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["record"]["group_id"], []).append(row)
    return groups


# -- manifest and preview ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_is_complete_and_counts_match(generated, decoded, family):
    folder = generated[family]
    manifest = _manifest(folder)
    validate(manifest, "manifest", where="manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["completed_at"] is not None
    n = len(PROMPTS) * SAMPLES
    assert manifest["counts"] == {
        "shards": NUM_SHARDS,
        "samples": n,
        "groups": len(PROMPTS),
        "processes_last_run": 1,
    }
    assert manifest["plan"]["num_shards"] == NUM_SHARDS
    assert manifest["plan"]["num_samples"] == n
    assert manifest["prompts"] == PROMPTS
    assert manifest["model"]["family"] == family
    assert manifest["settings"]["same_noise"] is (family == SHARED)
    assert manifest["settings"]["store_embeddings"] is (family == SHARED)
    assert (manifest["settings"]["height"], manifest["settings"]["width"]) == _size(family)
    expected_files = {"latents.npy", "timesteps.npy", "logprobs.npy", "png", "json"}
    if family in FLOW:
        expected_files.add("sigmas.npy")
    assert set(manifest["files"]) == expected_files
    assert manifest["sampler"]["latent_shape"][0] == STEPS + 1
    assert manifest["sampler"]["kind"] == ("ddim" if family == "ddim" else "flow_sde")
    assert manifest["sampler"]["latent_dtype"] == "float16"
    # the counts are true: this many shards on disk, this many samples in them, nothing half-written left
    assert sorted(p.name for p in folder.glob("shard-*.tar")) == [
        f"shard-{j:06d}.tar" for j in range(NUM_SHARDS)
    ]
    assert len(decoded[family]) == manifest["counts"]["samples"]
    assert len({r["record"]["group_id"] for r in decoded[family]}) == manifest["counts"]["groups"]
    assert not (folder / ".partial").exists()


def _preview_cell(height: int, width: int) -> tuple[int, int]:
    """(w, h) of a preview cell: tiny images are enlarged by the integer factor that brings the long side
    to 128 px or more (prefkit.grid.cell_scale)."""
    k = -(-128 // max(height, width))
    return width * k, height * k


@pytest.mark.parametrize("family", FAMILIES)
def test_preview_has_one_captioned_row_per_group(generated, decoded, family):
    path = generated[family] / "preview.png"
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = _preview_cell(*_size(family))
    with Image.open(path) as im:
        assert im.format == "PNG"
        # 4 px padding, a 14 px title band (the prompt) above each row; no footer: every group is shown
        assert im.size == (4 + SAMPLES * (w + 4), 4 + len(PROMPTS) * (14 + h + 4))
        preview = im.convert("RGB")
    for g, rows in _by_group(decoded[family]).items():
        top = 4 + g * (14 + h + 4)
        band = preview.crop((4, top, preview.width - 4, top + 14))
        assert band.getextrema() != ((255, 255), (255, 255), (255, 255)), f"group {g} has no title"
        for i, row in enumerate(sorted(rows, key=lambda r: r["record"]["sample_index"])):
            x = 4 + i * (w + 4)
            cell = preview.crop((x, top + 14, x + w, top + 14 + h))
            expected = row["image"].convert("RGB").resize((w, h), Image.Resampling.NEAREST)
            assert cell.tobytes() == expected.tobytes(), f"group {g}, sample {i} is not in its cell"


def test_preview_caps_groups_and_samples_and_says_so(generated, tmp_path):
    from prefkit.generate import write_preview

    folder = tmp_path / "copy"
    shutil.copytree(generated[SHARED], folder)
    path = write_preview(folder, max_groups=2, max_per_group=1)
    w, h = _preview_cell(*_size(SHARED))
    with Image.open(path) as im:
        # 2 rows of 1 image, then a 16 px footer: "1 more prompt group(s) not shown ..." in red
        assert im.size == (4 + 1 * (w + 4), 4 + 2 * (14 + h + 4) + 16)
        footer = im.convert("RGB").crop((0, 4 + 2 * (14 + h + 4), im.width, im.height))
    assert (192, 0, 0) in {c for _, c in footer.getcolors(1 << 16)}


# -- plain webdataset --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_webdataset_samples_have_the_documented_files(generated, raw_samples, family):
    manifest = _manifest(generated[family])
    files = set(manifest["files"])
    samples = raw_samples[family]
    assert len(samples) == len(PROMPTS) * SAMPLES
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    expected = [f"g{g:08d}_s{i:02d}" for g in range(len(PROMPTS)) for i in range(SAMPLES)]
    assert keys == expected  # shards in order, samples in order within each
    for s in samples:
        assert "." not in s["__key__"]
        assert {k for k in s if not k.startswith("__")} == files, s["__key__"]


@pytest.mark.parametrize("family", FAMILIES)
def test_webdataset_arrays_shapes_and_dtypes(generated, decoded, family):
    manifest = _manifest(generated[family])
    height, width = _size(family)
    shape = manifest["sampler"]["latent_shape"]
    for row in decoded[family]:
        record = row["record"]
        assert record["key"] == row["key"]
        assert record["latent_shape"] == shape
        lat = row["latents"]
        assert lat.dtype == np.float16
        assert list(lat.shape) == shape
        assert lat.shape[0] == STEPS + 1
        assert np.isfinite(lat).all()
        # the latent grid has the image's aspect: h and w are not swapped
        assert height * lat.shape[3] == width * lat.shape[2]

        ts = row["timesteps"]
        assert ts.shape == (STEPS,)
        assert ts.dtype == (np.int64 if family == "ddim" else np.float32)
        assert (np.diff(ts) < 0).all(), "timesteps go from noise (x_T) to data (x_0)"
        if family in FLOW:
            sig = row["sigmas"]
            assert sig.dtype == np.float32
            assert sig.shape == (STEPS + 1,)
            assert (np.diff(sig) < 0).all()
            assert sig[-1] == 0.0
            np.testing.assert_allclose(ts, sig[:-1] * 1000, rtol=1e-5)
        else:
            assert "sigmas" not in row

        lp = row["logprobs"]
        assert lp.dtype == np.float32
        assert lp.shape == (STEPS,)
        assert np.isfinite(lp).all()

        im = row["image"]
        assert im.format == "PNG"
        assert im.size == (width, height)
        im.convert("RGB").load()  # decodes fully


@pytest.mark.parametrize("family", FAMILIES)
def test_records_validate_and_describe_their_sample(generated, decoded, family):
    manifest = _manifest(generated[family])
    for row in decoded[family]:
        record = row["record"]
        validate(record, "trajectory", where=row["key"])
        g, i = record["group_id"], record["sample_index"]
        assert record["key"] == f"g{g:08d}_s{i:02d}"
        assert record["prompt"] == PROMPTS[g]
        assert record["family"] == family
        assert record["steps"] == STEPS
        assert (record["height"], record["width"]) == _size(family)
        assert record["same_noise"] is (family == SHARED)
        assert record["lp_reduction"] == "mean"
        assert record["pipeline_class"] == manifest["model"]["pipeline_class"]
        if family == "ddim":
            assert record["eta"] is not None and record["noise_level"] is None
        else:
            assert record["noise_level"] is not None and record["eta"] is None
    # every sample of a dataset shares one schedule
    first = decoded[family][0]
    for row in decoded[family][1:]:
        np.testing.assert_array_equal(row["timesteps"], first["timesteps"])


# -- datasets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_datasets_load_dataset_webdataset(generated, decoded, family, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = generated[family]
    manifest = _manifest(folder)
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(folder / "shard-*.tar")},
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert ds.num_rows == manifest["counts"]["samples"]
    columns = set(ds.column_names)
    assert set(manifest["files"]) | {"__key__"} <= columns
    assert {c for c in columns if not c.startswith("__")} == set(manifest["files"])
    assert isinstance(ds.features["png"], datasets.Image)

    by_key = {row["key"]: row for row in decoded[family]}
    height, width = _size(family)
    for item in ds:
        row = by_key[item["__key__"]]
        assert isinstance(item["png"], Image.Image)
        assert item["png"].size == (width, height)
        assert isinstance(item["json"], dict)
        assert item["json"] == row["record"]  # the struct is the record, nothing dropped or renamed
        # npy -> nested lists, with the dtype kept in the features
        lat = np.asarray(item["latents.npy"], dtype=np.float16)
        np.testing.assert_array_equal(lat, row["latents"])
        np.testing.assert_array_equal(np.asarray(item["timesteps.npy"]), row["timesteps"])
        np.testing.assert_array_equal(np.asarray(item["logprobs.npy"], dtype=np.float32), row["logprobs"])
        if family in FLOW:
            np.testing.assert_array_equal(np.asarray(item["sigmas.npy"], dtype=np.float32), row["sigmas"])


# -- schemas ---------------------------------------------------------------------------------------------------


def _schema_files() -> list[Path]:
    files = sorted((REPO / "schemas").glob("*.json"))
    assert files, "no schemas in schemas/"
    return files


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: p.name)
def test_schema_files_are_valid_draft_2020_12(path):
    import jsonschema

    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_installed_schemas_are_the_repository_schemas():
    installed = {p.name: p.read_text() for p in schema_dir().glob("*.schema.json")}
    repo = {p.name: p.read_text() for p in (REPO / "schemas").glob("*.schema.json")}
    assert installed == repo


def _mutate(record: dict, path: list, value) -> dict:
    out = copy.deepcopy(record)
    target = out
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["key"], "g00000000_s00.x", "key key:"),
        (["lp_reduction"], "sum", "key lp_reduction:"),
        (["prompt"], _DELETE, "'prompt' is a required property"),
        (["prompt"], "", "key prompt:"),
        (["latent_dtype"], "bfloat16", "key latent_dtype:"),
        (["latent_shape"], [4, 4, 16], "key latent_shape:"),
        (["eta"], 0, "key eta:"),
        (["group_id"], -1, "key group_id:"),
        (["family"], "SD XL", "key family:"),  # not a family name (the families themselves are modules)
        (["unexpected_field"], 1, "'unexpected_field' was unexpected"),
    ],
    ids=lambda v: "del" if v is _DELETE else None,
)
def test_bad_trajectory_record_is_rejected_naming_the_key(decoded, path, value, expected):
    record = decoded["ddim"][0]["record"]
    validate(record, "trajectory")  # the good one passes
    bad = _mutate(record, path, value)
    with pytest.raises(PrefkitError) as info:
        validate(bad, "trajectory", where="g00000000_s00.json")
    message = str(info.value)
    assert message.startswith("g00000000_s00.json: "), message
    assert expected in message, message
    assert "trajectory.schema.json" in message


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (["status"], "done", "status"),
        (["settings", "steps"], 0, "settings/steps"),
        (["sampler", "lp_reduction"], "sum", "sampler/lp_reduction"),
        (["plan", "shard_pattern"], "shard-%d.tar", "plan/shard_pattern"),
        (["files"], ["latents.npy", "latents.pkl"], "files/1"),
        (["format_version"], 2, "format_version"),
    ],
)
def test_bad_manifest_is_rejected_naming_the_key(generated, path, value, named):
    manifest = _manifest(generated["ddim"])
    bad = _mutate(manifest, path, value)
    with pytest.raises(PrefkitError) as info:
        validate(bad, "manifest", where="manifest.json")
    assert f"key {named}:" in str(info.value), str(info.value)


# -- no pickle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_no_pickle_anywhere(generated, family):
    folder = generated[family]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert not p.name.lower().endswith(FORBIDDEN_SUFFIXES), p
    npy_count = 0
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert member.isfile(), (shard.name, member.name)
                assert not member.name.lower().endswith(FORBIDDEN_SUFFIXES), (shard.name, member.name)
                if member.name.endswith(".npy"):
                    data = tar.extractfile(member).read()
                    array = np.load(io.BytesIO(data), allow_pickle=False)  # raises on a pickled array
                    assert not array.dtype.hasobject, member.name
                    npy_count += 1
    assert npy_count == len(PROMPTS) * SAMPLES * (4 if family in FLOW else 3)


# -- noise: --same-noise and seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_seeds_are_distinct_per_sample(decoded, family):
    seeds = [row["record"]["seed"] for row in decoded[family]]
    assert len(set(seeds)) == len(seeds)


def test_same_noise_shares_x_T_within_a_group(decoded):
    groups = _by_group(decoded[SHARED])
    assert len(groups) == len(PROMPTS)
    x_T_of_group = []
    for rows in groups.values():
        assert len(rows) == SAMPLES
        assert len({r["record"]["init_noise_seed"] for r in rows}) == 1
        assert len({r["record"]["seed"] for r in rows}) == SAMPLES
        first = rows[0]["latents"]
        for r in rows[1:]:
            assert r["record"]["same_noise"] is True
            np.testing.assert_array_equal(r["latents"][0], first[0])  # the same x_T
            assert not np.array_equal(r["latents"][-1], first[-1])  # but their own steps' noise: x_0 differs
        x_T_of_group.append(first[0])
    # groups do not share x_T with each other
    for a in range(len(x_T_of_group)):
        for b in range(a + 1, len(x_T_of_group)):
            assert not np.array_equal(x_T_of_group[a], x_T_of_group[b])
    init_seeds = {rows[0]["record"]["init_noise_seed"] for rows in groups.values()}
    assert len(init_seeds) == len(groups)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != SHARED])
def test_without_same_noise_samples_differ_at_x_T(decoded, family):
    for rows in _by_group(decoded[family]).values():
        for r in rows:
            assert r["record"]["same_noise"] is False
            assert r["record"]["init_noise_seed"] == r["record"]["seed"]
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                assert not np.array_equal(rows[a]["latents"][0], rows[b]["latents"][0])
                assert not np.array_equal(rows[a]["latents"][-1], rows[b]["latents"][-1])


# -- --store-embeddings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != SHARED])
def test_no_embeddings_without_the_flag(generated, family):
    assert not (generated[family] / "embeddings").exists()


def test_store_embeddings_once_per_group(generated, raw_samples, tiny_models):
    import torch
    from safetensors.torch import load_file

    from prefkit.families import family_of, load_pipeline

    folder = generated[SHARED]
    manifest = _manifest(folder)
    fam = family_of(load_pipeline(tiny_models[SHARED]))
    expected_negative = fam.encode([manifest["settings"]["negative_prompt"]], None)
    shards = sorted(folder.glob("shard-*.tar"))
    assert len(shards) == NUM_SHARDS
    seen_groups = set()
    for shard in shards:
        path = folder / "embeddings" / f"{shard.stem}.safetensors"
        assert path.is_file(), path
        tensors = load_file(str(path))
        groups = sorted(
            {json.loads(s["json"])["group_id"] for s in wds.WebDataset(str(shard), shardshuffle=False)}
        )
        group_keys = {k for k in tensors if k.startswith("g")}
        assert {k.split(".")[0] for k in group_keys} == {f"g{g:08d}" for g in groups}
        for g in groups:
            key = f"g{g:08d}.prompt_embeds"
            assert key in tensors, (path.name, sorted(tensors))
            enc = fam.encode([PROMPTS[g]], None)
            assert tensors[key].shape == enc.prompt_embeds[0].shape
            assert torch.equal(tensors[key], enc.prompt_embeds[0]), key
            if enc.pooled is not None:  # sd3 and flux have a pooled embedding too
                assert torch.equal(tensors[f"g{g:08d}.pooled"], enc.pooled[0])
        assert "negative.prompt_embeds" in tensors, sorted(tensors)
        assert torch.equal(tensors["negative.prompt_embeds"], expected_negative.prompt_embeds[0])
        if expected_negative.pooled is not None:
            assert torch.equal(tensors["negative.pooled"], expected_negative.pooled[0])
        seen_groups.update(groups)
    assert seen_groups == set(range(len(PROMPTS)))


# -- the command line answers at once ----------------------------------------------------------------------


def _prefkit_cmd() -> list[str]:
    script = Path(sys.executable).parent / "prefkit"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from prefkit.cli.main import main; main()"]


def _help_env() -> dict[str, str]:
    # wide and plain: rich neither wraps the help column nor draws colours
    return {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"]], ids=["prefkit", "generate"])
def test_help_is_fast(args):
    start = time.perf_counter()
    proc = subprocess.run(_prefkit_cmd() + args, capture_output=True, text=True, env=_help_env(), timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert elapsed < 2.0, f"`prefkit {' '.join(args)}` took {elapsed:.2f} s"


def test_cli_import_and_help_do_not_load_torch():
    code = (
        "import sys\n"
        "import prefkit.cli.main as m\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'accelerate', 'datasets', 'webdataset')\n"
        "after_import = [h for h in heavy if h in sys.modules]\n"
        "try:\n"
        "    m.app(['generate', '--help'], prog_name='prefkit')\n"
        "except SystemExit:\n"
        "    pass\n"
        "after_help = [h for h in heavy if h in sys.modules]\n"
        "print('RESULT', after_import, after_help)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_help_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [] []" in proc.stdout, proc.stdout[-2000:]


def test_generate_help_lists_every_flag_with_its_help():
    import dataclasses

    from prefkit.config import GenerateConfig

    proc = subprocess.run(
        _prefkit_cmd() + ["generate", "--help"], capture_output=True, text=True, env=_help_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for flag in ISSUE_FLAGS:
        # whole flag: --prompt must not be satisfied by --prompts
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
            f"{flag} missing from generate --help"
        )
    flat = _flat(text)
    for f in dataclasses.fields(GenerateConfig):
        helptext = f.metadata.get("help", "")
        if helptext:  # shown whole: nothing swallowed as markup, e.g. "[default, flow matching]"
            assert _flat(helptext) in flat, f"help of --{f.name.replace('_', '-')} is not shown intact"
