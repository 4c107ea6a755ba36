"""`prefkit publish`: the Hub-ready folder loads with `datasets`; the upload goes to a fake Hub (a real HTTP
server on 127.0.0.1, tests/hub_server.py) through the real CLI in a fresh process."""

from __future__ import annotations

import io
import json

import pytest
import yaml


@pytest.fixture(scope="module")
def dataset(labelled_dataset):
    return labelled_dataset


@pytest.fixture(scope="module")
def staging(dataset, tmp_path_factory):
    from typer.testing import CliRunner

    from prefkit.cli.main import app

    folder = tmp_path_factory.mktemp("staging") / "hub"
    args = ["publish", str(dataset), "--repo-id", "me/tiny-prefs", "--dry-run", "--staging", str(folder)]
    res = CliRunner().invoke(app, args + ["--val-fraction", "0.34"])
    assert res.exit_code == 0, res.output
    assert "would upload" in res.output and "data/train-00000-of-00001.parquet" in res.output
    return folder


def test_folder_tree(staging):
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    assert files == [
        ".prefkit-publish",
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "labels/jpeg.meta.json",
        "trajectories/embeddings/shard-000000.safetensors",
        "trajectories/manifest.json",
        "trajectories/shard-000000.parquet",
    ]


def test_default_config_is_pick_a_pic_with_splits_by_prompt(staging, dataset):
    import datasets

    from prefkit.label_sets import read_pairs

    ds = datasets.load_dataset(str(staging))
    assert set(ds) == {"train", "validation"}
    f = ds["train"].features
    assert f["caption"] == datasets.Value("string")
    for col in ("jpg_0", "jpg_1"):
        assert f[col] == datasets.Value("binary")
    for col in ("label_0", "label_1", "agreement"):
        assert f[col] == datasets.Value("float64")
    assert f["group_id"] == datasets.Value("int64")
    assert f["has_label"] == f["is_tie"] == datasets.Value("bool")
    assert f["judge"] == datasets.Value("string")
    assert set(f) >= {"pair_id", "key_0", "key_1", "source", "votes", "split"}
    train_groups = set(ds["train"]["group_id"])
    val_groups = set(ds["validation"]["group_id"])
    assert train_groups and val_groups and not train_groups & val_groups
    assert not set(ds["train"]["caption"]) & set(ds["validation"]["caption"])
    assert set(ds["train"]["split"]) == {"train"} and set(ds["validation"]["split"]) == {"validation"}
    # every pair of the label set, with its label
    pairs = {p["pair_id"]: p for p in read_pairs(dataset, "jpeg")}
    rows = list(ds["train"]) + list(ds["validation"])
    assert sorted(r["pair_id"] for r in rows) == sorted(pairs)
    for r in rows:
        assert r["label_0"] == pairs[r["pair_id"]]["label_0"]
        assert json.loads(r["judge"])["name"] == "jpeg"


def test_diffusion_dpo_reader(staging):
    """What a Diffusion-DPO training script does with Pick-a-Pic: JPEG bytes, ties dropped."""
    import datasets
    from PIL import Image

    ds = datasets.load_dataset(str(staging), split="train")
    kept = ds.filter(lambda row: row["label_0"] != 0.5)
    assert len(kept) == sum(not t for t in ds["is_tie"])
    for row in kept:
        im_0 = Image.open(io.BytesIO(row["jpg_0"]))
        im_1 = Image.open(io.BytesIO(row["jpg_1"]))
        assert im_0.format == im_1.format == "JPEG"
        assert im_0.convert("RGB").size == (32, 32)
        assert isinstance(row["caption"], str) and row["label_0"] in (0.0, 1.0)


def test_trajectories_config_round_trips_the_shards(staging, dataset):
    import datasets
    import numpy as np

    from prefkit.shards import iter_samples

    traj = datasets.load_dataset(str(staging), "trajectories", split="train")
    assert len(traj) == 9
    by_key = {r["key"]: r for r in traj}
    for s in iter_samples(dataset):
        r = by_key[s["record"]["key"]]
        assert json.loads(r["json"]) == s["record"]
        np.testing.assert_array_equal(np.load(io.BytesIO(r["latents"])), s["latents"])
        np.testing.assert_array_equal(np.load(io.BytesIO(r["logprobs"])), s["logprobs"])


def test_card_front_matter(staging):
    text = (staging / "README.md").read_text()
    assert text.startswith("---\n")
    fm = yaml.safe_load(text.split("---\n")[1])
    assert fm["task_categories"] == ["text-to-image"]
    assert {"preference", "dpo", "d3po", "diffusion"} <= set(fm["tags"])
    assert fm["size_categories"] == ["n<1K"]
    assert fm["annotations_creators"] == ["machine-generated"]
    assert fm["license"] == "other"
    configs = {c["config_name"]: c for c in fm["configs"]}
    assert set(configs) == {"default", "trajectories"}
    assert [d["split"] for d in configs["default"]["data_files"]] == ["train", "validation"]
    body = text.split("---\n", 2)[2]
    for needle in ("## Generation", "## Labelling protocol", "## Fields", 'load_dataset("me/tiny-prefs")'):
        assert needle in body
    assert 'load_dataset("me/tiny-prefs", "trajectories"' in body
    assert 'Image.open(io.BytesIO(row["jpg_0"]))' in body


def test_split_is_deterministic_and_val_fraction_zero_is_train_only(dataset, tmp_path):
    from prefkit.publish import assign_splits

    pairs = [{"caption": f"p{i}"} for i in range(10)]
    a = assign_splits(pairs, 0.2, seed=3)
    assert a == assign_splits(pairs, 0.2, seed=3)
    assert sum(v == "validation" for v in a.values()) == 2
    assert set(assign_splits(pairs, 0.0, seed=3).values()) == {"train"}

    from prefkit.config import PublishConfig
    from prefkit.publish import run_publish

    cfg = PublishConfig(
        dataset=str(dataset), repo_id="me/x", dry_run=True, staging=str(tmp_path / "s"), val_fraction=0
    )
    summary = run_publish(cfg)
    assert set(summary["splits"]) == {"train"} and summary["uploaded"] is False
    fm = yaml.safe_load((tmp_path / "s" / "README.md").read_text().split("---\n")[1])
    assert fm["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    # a re-run rebuilds the folder; a foreign non-empty folder is refused
    run_publish(cfg)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    from prefkit.errors import PrefkitError

    cfg.staging = str(tmp_path / "foreign")
    with pytest.raises(PrefkitError, match="not made by `prefkit publish`"):
        run_publish(cfg)
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "mine"


# -- the upload, against a fake Hub (tests/hub_server.py): a real HTTP server, the real prefkit CLI ------------


def _staged(staging):
    """path -> bytes of every file of the built folder that is uploaded (not the marker)."""
    return {
        p.relative_to(staging).as_posix(): p.read_bytes()
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != ".prefkit-publish"
    }


def test_upload_creates_the_repo_and_commits_the_folder(dataset, tmp_path, hub, hub_cli):
    staging = tmp_path / "hub"
    res = hub_cli(["publish", dataset, "--repo-id", "me/tiny-prefs", "--private", "--staging", staging])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"published {hub.url}/datasets/me/tiny-prefs" in res.stdout
    repo = hub.repo("me/tiny-prefs", "dataset")
    assert repo.private is True and ("model", "me/tiny-prefs") not in hub.repos
    staged = _staged(staging)
    assert "README.md" in staged and "data/train-00000-of-00001.parquet" in staged
    # every staged file, byte for byte, and nothing else (but the .gitattributes the Hub writes)
    assert repo.files == {".gitattributes": repo.files[".gitattributes"], **staged}
    assert [c["summary"] for c in repo.commits] == ["prefkit publish"]
    assert sorted(repo.commits[0]["added"]) == sorted(staged)
    assert ("POST", "/api/datasets/me/tiny-prefs/commit/main") in hub.requests


def test_upload_again_sends_no_unchanged_file_and_removes_stale_data(dataset, tmp_path, hub, hub_cli):
    """Re-running resumes: files already on the Hub are not sent again; data files of an earlier publish
    that this one does not write are deleted in the same commit (delete_patterns), other files are kept."""
    args = ["publish", dataset, "--repo-id", "me/tiny-prefs", "--staging", tmp_path / "hub", "-q"]
    res = hub_cli(args)
    assert res.returncode == 0, res.stderr
    repo = hub.repo("me/tiny-prefs", "dataset")
    repo.files["data/train-00001-of-00002.parquet"] = b"an earlier, larger publish"
    repo.files["notes.txt"] = b"the owner's own file"
    before = dict(repo.files)
    res = hub_cli(args)
    assert res.returncode == 0, res.stderr
    assert len(repo.commits) == 2
    assert repo.commits[1]["added"] == []  # every file unchanged: none sent again
    assert repo.commits[1]["deleted"] == ["data/train-00001-of-00002.parquet"]
    del before["data/train-00001-of-00002.parquet"]
    assert repo.files == before


def test_offline_or_no_token_is_a_clear_error(dataset, tmp_path, cli, hub, hub_cli):
    args = ["publish", dataset, "--repo-id", "me/tiny-prefs", "--staging", tmp_path / "s"]
    res = hub_cli(args, HF_HUB_OFFLINE="1")
    assert res.returncode == 2
    assert "HF_HUB_OFFLINE" in res.stderr and "--dry-run" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr

    res = hub_cli(args, HF_TOKEN=None)  # and HF_HOME holds no stored token
    assert res.returncode == 2
    assert "no Hugging Face token" in res.stderr and "Traceback" not in res.stderr
    assert hub.requests == []  # neither reached the Hub

    res = cli(["publish", dataset, "--repo-id", "not-a-repo-id", "--dry-run"])
    assert res.exit_code == 2 and "OWNER/NAME" in res.stderr


def test_dry_run_makes_no_request(dataset, tmp_path, hub, hub_cli):
    res = hub_cli(
        ["publish", dataset, "--repo-id", "me/tiny-prefs", "--dry-run", "--staging", tmp_path / "s"]
    )
    assert res.returncode == 0, res.stderr
    assert "would upload" in res.stdout
    assert hub.requests == [] and hub.repos == {}


def test_upload_failure_is_a_clear_error(dataset, tmp_path, hub, hub_cli):
    args = ["publish", dataset, "--repo-id", "me/tiny-prefs", "--staging", tmp_path / "s", "-q"]
    hub.fail[("POST", "create")] = "drop"  # the connection closes without an answer
    res = hub_cli(args)
    assert res.returncode == 2
    assert "upload to me/tiny-prefs failed" in res.stderr and "disconnected" in res.stderr
    assert "run the same command again" in res.stderr
    assert "Traceback" not in res.stderr

    del hub.fail[("POST", "create")]
    hub.fail[("POST", "commit")] = (403, "storage quota exceeded")  # the Hub refuses the commit
    res = hub_cli(args)
    assert res.returncode == 2
    assert "storage quota exceeded" in res.stderr and "run the same command again" in res.stderr
    assert "Traceback" not in res.stderr
    assert hub.repo("me/tiny-prefs", "dataset").commits == []

    res = hub_cli(args, HF_TOKEN="hf_not_the_right_one")  # a token the Hub does not accept
    assert res.returncode == 2
    assert "401" in res.stderr and "Traceback" not in res.stderr
