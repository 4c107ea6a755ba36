"""Faults met for real: full disks, read-only folders, torn metrics lines, hostile label sets and damaged
shards (issue 16, items 3, 4 and 6).

Every case runs the real command (the ``cli`` fixture) and asserts exit code 2, ONE line of error naming
the file, no temporary file left behind and nothing changed outside the output folder.

The faults are real where the test can make them: a full disk is a 1 MB tmpfs filled to the last byte,
a read-only folder a tmpfs mounted (or remounted) ``ro`` -- tests run as root, for whom ``chmod`` does
not stop writes. Where the moment matters (the disk fills during a metrics append or a checkpoint), the
test fills the disk from a hook at that point and the write then fails on its own, with the OS's ENOSPC.
Without permission to mount, those tests are skipped (saying so); nothing is simulated.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--max-steps", 1, "--batch-size", 1, "-q"]


# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size="1m")``: a fresh tmpfs mounted at tmp_path/name, unmounted after the test."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m") -> Path:
        d = tmp_path / name
        d.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True
        )
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the fault needs one")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], check=False)


def _read_only(d: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)


def _fill(d: Path) -> Path:
    """Fill the file system of ``d`` to the last byte with d/filler; returns the filler."""
    filler = d / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    with open(filler, "ab", buffering=0) as f:  # the last partial block
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime) of every file under ``root`` except under ``skip``."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _temp_files(root: Path) -> list[str]:
    """Files and folders a failed write could leave: temporary files, .part files, partial checkpoints."""
    found = []
    for p in Path(root).rglob("*"):
        n = p.name
        if ".tmp" in n or n.endswith(".part") or (p.parent.name == ".partial"):
            found.append(str(p.relative_to(root)))
    return sorted(found)


def _one_line_error(res, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, holding each needle."""
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, err)
    assert "Traceback" not in res.output + err, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    print(f"\n[one-line error] {err}")
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _pairs(dataset: Path, name: str = "jpeg") -> list[dict]:
    return [json.loads(ln) for ln in (dataset / "labels" / f"{name}.jsonl").read_text().splitlines()]


# -- 3. torn metrics lines and resume ----------------------------------------------------------------------


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["d3po", "ddpo"])
def test_resume_repairs_a_torn_last_metrics_line(cli, labelled_dataset, tmp_path, objective):
    """A metrics line torn by a kill or a full disk (no newline, not JSON) is dropped on --resume: the
    DPO and reward objectives both go through train.setup_run."""
    out = tmp_path / "run"
    args = ["train", labelled_dataset, "--out", out, "--objective", objective, "--batch-size", 1, "-q"]
    res = cli([*args, "--max-steps", 2, "--checkpoint-every", 1])
    assert res.exit_code == 0, res.output
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "loss": 0.69')  # torn: the process died mid-append
    res = cli([*args, "--max-steps", 3, "--checkpoint-every", 1, "--resume"])
    assert res.exit_code == 0, res.output + res.stderr
    assert _metric_steps(out) == [1, 2, 3]


@pytest.mark.slow
def test_damaged_metrics_line_before_the_end_is_one_error(cli, labelled_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["train", labelled_dataset, "--out", out, "--batch-size", 1, "-q"]
    assert cli([*args, "--max-steps", 2]).exit_code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("{oops\n" + lines[1] + "\n")
    _one_line_error(cli([*args, "--max-steps", 3, "--resume"]), "metrics.jsonl:1", "not JSON", "remove")


@pytest.mark.slow
def test_run_killed_before_its_first_checkpoint_restarts_with_clean_metrics(cli, labelled_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["train", labelled_dataset, "--out", out, "--batch-size", 1, "--max-steps", 2, "-q"]
    assert cli(args).exit_code == 0
    # as left by a kill after step 2 was logged, before any checkpoint: config.yaml and metrics only
    for p in out.iterdir():
        if p.name not in ("config.yaml", "metrics.jsonl"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert _metric_steps(out) == [1, 2]
    res = cli([*args, "--resume"])
    assert res.exit_code == 0, res.output + res.stderr
    assert _metric_steps(out) == [1, 2]  # not 1, 2, 1, 2


@pytest.mark.slow
def test_disk_full_during_a_metrics_append_then_resume(cli, labelled_dataset, tmpfs, monkeypatch):
    """The disk fills just before step 1's metrics line (a tmpfs allocates whole pages: a line appended
    to a file's first page would still fit): the append fails with the OS's ENOSPC, nothing torn is left,
    and after space is freed --resume completes the run."""
    import prefkit.training.engine as train  # the shared training loop and checkpoints live here

    disk = tmpfs("disk", "4m")
    out = disk / "run"
    original = train.append_line
    fillers = []

    def append_then_fill(path, line):
        if json.loads(line)["step"] == 1 and not fillers:
            fillers.append(_fill(disk))
        original(path, line)

    monkeypatch.setattr(train, "append_line", append_then_fill)
    before = _tree(labelled_dataset)
    args = ["train", labelled_dataset, "--out", out, "--batch-size", 1, "--checkpoint-every", 1, "-q"]
    _one_line_error(cli([*args, "--max-steps", 3]), str(out / "metrics.jsonl"), "no space left")
    assert _metric_steps(out) == []
    assert _temp_files(out) == []
    assert _tree(labelled_dataset) == before
    fillers[0].unlink()
    monkeypatch.setattr(train, "append_line", original)
    res = cli([*args, "--max-steps", 3, "--resume"])
    assert res.exit_code == 0, res.output + res.stderr
    assert _metric_steps(out) == [1, 2, 3]


# -- 4. hostile label sets -------------------------------------------------------------------------------


def _hostile(dataset: Path, records: list[dict], name: str = "evil") -> None:
    """labels/NAME.jsonl with ``records`` and a copy of the jpeg set's meta: a set shipped by a stranger."""
    labels = dataset / "labels"
    (labels / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = json.loads((labels / "jpeg.meta.json").read_text())
    (labels / f"{name}.meta.json").write_text(json.dumps({**meta, "name": name}))


def _cross_prompt(pairs: list[dict]) -> dict:
    a, b = pairs[0], next(p for p in pairs if p["group_id"] != pairs[0]["group_id"])
    k0, k1 = sorted((a["key_0"], b["key_1"]))
    return {**a, "key_0": k0, "key_1": k1, "pair_id": f"{k0}__{k1}"}


HOSTILE = [
    ("label-2", lambda ps: {**ps[0], "label_0": 2.0, "label_1": -1.0}, "key label_0: 2.0 is greater than"),
    ("label-minus-50", lambda ps: {**ps[0], "label_0": -50, "label_1": 51}, "key label_0: -50 is less than"),
    ("label-string", lambda ps: {**ps[0], "label_0": "1"}, "key label_0: '1' is not of type 'number'"),
    ("cross-prompt", _cross_prompt, "come from different prompts"),
    ("unknown-key", lambda ps: {**ps[0], "key_1": "g99999999_s00", "pair_id": f"{ps[0]['key_0']}__g99999999_s00"},
     "unknown sample key 'g99999999_s00'"),
    ("labels-sum", lambda ps: {**ps[0], "label_0": 0.9, "label_1": 0.9}, "label_0 0.9 + label_1 0.9 != 1"),
    ("wrong-group", lambda ps: {**ps[0], "group_id": ps[0]["group_id"] + 1}, "group_id"),
    ("not-an-object", lambda ps: [ps[0]], "expected a JSON object, got list"),
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile_dataset(labelled_dataset, tmp_path_factory) -> Path:
    return _copy(labelled_dataset, tmp_path_factory.mktemp("hostile") / "ds")


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c[0])
def test_hostile_label_set_is_refused_by_train_publish_and_stats(cli, hostile_dataset, tmp_path, case):
    _, make, needle = case
    good = _pairs(hostile_dataset)
    _hostile(hostile_dataset, [good[1], make(good)])  # line 2 is the hostile one
    where = f"{hostile_dataset / 'labels' / 'evil.jsonl'}:2"
    before = _tree(hostile_dataset)
    out = tmp_path / "run"
    _one_line_error(cli(["train", hostile_dataset, "--labels", "evil", "--out", out, *TRAIN]), where, needle)
    assert not out.exists()
    staging = tmp_path / "staging"
    args = [
        "publish",
        hostile_dataset,
        "--labels",
        "evil",
        "--repo-id",
        "me/x",
        "--dry-run",
        "--staging",
        staging,
    ]
    _one_line_error(cli(args), where, needle)
    assert not staging.exists()
    _one_line_error(cli(["label", "stats", hostile_dataset]), where, needle)
    assert _tree(hostile_dataset) == before


@pytest.mark.slow
def test_hostile_label_set_errors_are_the_importers(cli, hostile_dataset, tmp_path):
    """The same check, the same words: a cross-prompt pair imported with `label --source human`."""
    good = _pairs(hostile_dataset)
    bad = _cross_prompt(good)
    vote = tmp_path / "votes.jsonl"
    vote.write_text(json.dumps({"key_0": bad["key_0"], "key_1": bad["key_1"], "choice": "0"}) + "\n")
    imported = _one_line_error(
        cli(["label", hostile_dataset, "--source", "human", "--input", vote, "--name", "h"])
    )
    _hostile(hostile_dataset, [bad])
    trained = _one_line_error(
        cli(["train", hostile_dataset, "--labels", "evil", "--out", tmp_path / "o", *TRAIN])
    )
    assert imported.split(": ", 2)[2] == trained.split(": ", 2)[2]  # after "error: FILE:LINE: "


@pytest.mark.slow
def test_hostile_scores_are_refused_by_the_reward_objectives(cli, hostile_dataset, tmp_path):
    labels = hostile_dataset / "labels"
    for f in labels.glob("jpeg.*"):
        shutil.copy(f, labels / f.name.replace("jpeg", "evil", 1))
    scores = labels / "evil.scores.jsonl"
    recs = [json.loads(ln) for ln in scores.read_text().splitlines()]
    recs[0]["score"] = "1e400"
    scores.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = [
        "train",
        hostile_dataset,
        "--objective",
        "ddpo",
        "--labels",
        "evil",
        "--out",
        tmp_path / "o",
        *TRAIN,
    ]
    _one_line_error(cli(args), f"{scores}:1", "key score: '1e400' is not of type 'number'")


# -- 6. damaged input: one line, exit 2 ----------------------------------------------------------------------


def _rewrite_shard(shard: Path, change) -> None:
    """Rebuild a shard with ``change(name, data) -> [(name, data), ...]`` applied to each member."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members += change(m.name, tar.extractfile(m).read())
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _json_member(value):
    def change(name, data):
        return [(name, json.dumps(value).encode() if name.endswith(".json") else data)]

    return change


def _extra_member(evil_name):
    def change(name, data):
        out = [(name, data)]
        if name.endswith(".json"):
            out.append((evil_name, data))
        return out

    return change


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


DAMAGED = [
    ("truncated-tar", lambda d: _truncate(d / "shard-000000.tar"), "shard-000000.tar: a damaged tar file"),
    ("json-is-a-list", lambda d: _rewrite_shard(d / "shard-000000.tar", _json_member([1, 2])), "shard-000000.tar"),
    ("json-lacks-keys", lambda d: _rewrite_shard(d / "shard-000000.tar", _json_member({})), "shard-000000.tar"),
    ("member-dotdot", lambda d: _rewrite_shard(d / "shard-000000.tar", _extra_member("../../x.json")),
     "shard-000000.tar"),
    ("member-absolute", lambda d: _rewrite_shard(d / "shard-000000.tar", _extra_member("/abs/x.json")),
     "shard-000000.tar"),
    ("manifest-is-a-list", lambda d: (d / "manifest.json").write_text("[]"), "manifest.json: a manifest is a JSON object"),
    ("manifest-nested", lambda d: (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
     "manifest.json: JSON nested too deeply"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", DAMAGED, ids=lambda c: c[0])
@pytest.mark.parametrize("command", ["label", "train", "publish"])
def test_damaged_dataset_is_one_error(cli, labelled_dataset, tmp_path, case, command):
    _, damage, needle = case
    ds = _copy(labelled_dataset, tmp_path / "ds")
    damage(ds)
    before = _tree(ds)
    out = tmp_path / "out"
    args = {
        "label": ["label", ds, "--source", "jpeg", "--name", "again", "-q"],
        "train": ["train", ds, "--out", out, *TRAIN],
        "publish": ["publish", ds, "--repo-id", "me/x", "--dry-run", "--staging", out, "-q"],
    }[command]
    _one_line_error(cli(args), needle)
    assert _tree(ds) == before and not (tmp_path / "x.json").exists() and not Path("/abs/x.json").exists()
    assert not out.exists() or _temp_files(out) == []


@pytest.mark.slow
def test_deeply_nested_json_is_one_error(cli, hostile_dataset, tmp_path):
    """A JSON line nested 100,000 deep (RecursionError in json) in a label input and in a label set."""
    deep = "[" * 100_000 + "]" * 100_000
    vote = tmp_path / "deep.jsonl"
    vote.write_text(deep + "\n")
    args = [
        "label",
        hostile_dataset,
        "--source",
        "human",
        "--format",
        "prefkit",
        "--input",
        vote,
        "--name",
        "d",
    ]
    _one_line_error(cli(args), f"{vote}:1", "nested too deeply")
    labels = hostile_dataset / "labels"
    (labels / "evil.jsonl").write_text(deep + "\n")
    (labels / "evil.meta.json").write_text((labels / "jpeg.meta.json").read_text())
    out = tmp_path / "o"
    _one_line_error(
        cli(["train", hostile_dataset, "--labels", "evil", "--out", out, *TRAIN]), "nested too deeply"
    )


# -- 6. full disks and read-only folders --------------------------------------------------------------------


def _generate(out: Path, model: str, *extra) -> list:
    return ["generate", "--out", out, "--model", model, "--prompt", "a red circle", "--prompt", "a cat",
            "--samples-per-prompt", 2, "--steps", 2, "--groups-per-shard", 1, "-q", *extra]  # fmt: skip


@pytest.mark.slow
def test_generate_on_a_full_disk(cli, tiny_models, tmpfs, tmp_path):
    disk = tmpfs("disk")
    out = disk / "ds"
    filler = _fill(disk)
    _one_line_error(cli(_generate(out, tiny_models["sd3"])), "cannot write: no space left")
    assert _temp_files(disk) == []
    filler.unlink()
    res = cli(_generate(out, tiny_models["sd3"], "--resume"))
    assert res.exit_code == 0, res.output + res.stderr


@pytest.mark.slow
def test_generate_disk_full_mid_run_leaves_no_temp_file(cli, tiny_models, tmpfs, monkeypatch):
    """The disk fills after the first shard: the second shard's write fails, its partial file is removed."""
    import prefkit.generate as generate

    disk = tmpfs("disk")
    out = disk / "ds"
    original = generate.write_shard
    calls = []

    def write_then_fill(folder, index, samples):
        if calls:
            _fill(disk)
        calls.append(index)
        return original(folder, index, samples)

    monkeypatch.setattr(generate, "write_shard", write_then_fill)
    _one_line_error(cli(_generate(out, tiny_models["sd3"])), "shard-000001.tar: cannot write: no space left")
    assert _temp_files(out) == [] and (out / "shard-000000.tar").is_file()


@pytest.mark.slow
def test_train_disk_full_at_a_checkpoint(cli, labelled_dataset, tmpfs, monkeypatch):
    """torch.save's own message for this is 'unexpected pos'; the error names the disk and the folder."""
    import prefkit.training.engine as train  # the shared training loop and checkpoints live here

    disk = tmpfs("disk", "4m")
    out = disk / "run"
    original = train.save_checkpoint

    def fill_then_save(out_, state, *a, **kw):
        _fill(disk)
        return original(out_, state, *a, **kw)

    monkeypatch.setattr(train, "save_checkpoint", fill_then_save)
    before = _tree(labelled_dataset)
    args = [
        "train",
        labelled_dataset,
        "--out",
        out,
        "--batch-size",
        1,
        "--max-steps",
        2,
        "--checkpoint-every",
        1,
    ]
    _one_line_error(cli([*args, "-q"]), str(out / "checkpoint-1"), "no space left")
    assert _temp_files(out) == [] and not list(out.glob("checkpoint-*"))
    assert _tree(labelled_dataset) == before


@pytest.mark.slow
def test_label_on_a_full_disk_leaves_no_temp_file_and_reruns(cli, labelled_dataset, tmpfs):
    disk = tmpfs("disk", "8m")
    ds = _copy(labelled_dataset, disk / "ds")
    filler = _fill(disk)
    args = ["label", ds, "--source", "jpeg", "--name", "again", "-q"]
    _one_line_error(cli(args), "again", "no space left")
    assert _temp_files(ds) == [] and not list((ds / "labels").glob("again.*"))
    filler.unlink()
    assert cli(args).exit_code == 0  # no "exists"


@pytest.mark.slow
def test_publish_on_a_full_disk_leaves_no_part_file(cli, labelled_dataset, tmpfs):
    disk = tmpfs("disk")
    staging = disk / "staging"
    _fill(disk)
    args = ["publish", labelled_dataset, "--repo-id", "me/x", "--dry-run", "--staging", staging, "-q"]
    _one_line_error(cli(args), "no space left")
    assert _temp_files(disk) == []


@pytest.fixture
def read_only(tmpfs, labelled_dataset):
    """A read-only folder holding a copy of the labelled dataset (a tmpfs remounted ro)."""
    d = tmpfs("ro", "16m")
    _copy(labelled_dataset, d / "ds")
    _read_only(d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("command", ["generate", "train", "label", "publish", "eval"])
def test_read_only_output_folder(cli, tiny_models, labelled_dataset, read_only, tmp_path, command):
    ds = read_only / "ds"
    before = _tree(read_only)
    if command == "eval":  # a LoRA to evaluate, written where it can be
        run = tmp_path / "run"
        assert cli(["train", labelled_dataset, "--out", run, *TRAIN]).exit_code == 0
    args = {
        "generate": _generate(read_only / "new", tiny_models["sd3"]),
        "train": ["train", ds, "--out", read_only / "run", *TRAIN],
        "label": ["label", ds, "--source", "jpeg", "--name", "again", "-q"],
        "publish": ["publish", ds, "--repo-id", "me/x", "--dry-run", "-q"],  # staging inside the dataset
        "eval": ["eval", "--lora", tmp_path / "run" / "lora", "--out", read_only / "eval", "--source", "jpeg",
                 "--samples-per-prompt", 1, "--prompt", "a cat", "-q"],
    }[command]  # fmt: skip
    _one_line_error(cli(args), str(read_only), "read-only")
    assert _tree(read_only) == before


# -- a label run killed mid-write -----------------------------------------------------------------------------


@pytest.mark.slow
def test_label_killed_mid_write_is_not_a_set_and_reruns(cli, labelled_dataset, tmp_path):
    """Killed after the pairs file, before its meta (or mid temporary file): `label stats` lists no such
    set, and the rerun writes it instead of saying "exists"."""
    ds = _copy(labelled_dataset, tmp_path / "ds")
    labels = ds / "labels"
    shutil.copy(labels / "jpeg.jsonl", labels / "again.jsonl")
    (labels / ".again.meta.json.tmp-99999").write_bytes(b"")
    res = cli(["label", "stats", ds])
    assert res.exit_code == 0 and "again" not in res.output
    res = cli(["label", ds, "--source", "jpeg", "--name", "again", "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    assert (labels / "again.meta.json").is_file() and _temp_files(ds) == []
    assert "again" in cli(["label", "stats", ds]).output
