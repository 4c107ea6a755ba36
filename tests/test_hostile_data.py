"""A dataset from a stranger (issue 16, items 1, 2, 5, 9): a gzip bomb named like a shard, members larger
than the manifest allows, arrays of the wrong dtype or shape or holding a pickle, symlinks out of the
dataset folder, HTML in everything the dataset card shows. Each hostile input is built here for real; each
must end in exit code 2 with one line naming the file, bounded memory, and nothing changed outside the
command's output folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

SHARD = "shard-000000.tar"
BOMB_BYTES = 1 << 30  # what the bomb decompresses to; its file is ~1 MB
RSS_LIMIT_KB = 600_000  # a CLI run that read the bomb's member would pass 1.5 GB


# -- building hostile input ---------------------------------------------------------------------------------


def write_gzip_bomb(path: Path, member: str, size: int = BOMB_BYTES) -> None:
    """One gzip stream of a tar holding ``member``: ``size`` zero bytes (~1 MB of file per GB). Built from
    one deflated MiB of zeros repeated: each copy ends with a full flush, so it needs no earlier window."""
    mib = 1 << 20
    info = tarfile.TarInfo(member)
    info.size = size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    zeros = b"\0" * mib

    def deflated(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    block = deflated(zeros)
    n = size // mib + 1  # the member, then the end-of-archive zero blocks
    crc = zlib.crc32(header)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated(header))
        for _ in range(n):
            f.write(block)
        f.write(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))
        f.write(struct.pack("<II", crc, (len(header) + n * mib) & 0xFFFFFFFF))


def write_sparse_member_tar(path: Path, member: str, size: int) -> None:
    """A plain tar whose one member claims ``size`` bytes; the file is sparse, so it costs no disk."""
    info = tarfile.TarInfo(member)
    info.size = size
    with open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        f.truncate(512 + size + 1024)


def rewrite_member(shard: Path, suffix: str, change) -> None:
    """Rewrite every member of ``shard`` whose name ends with ``suffix`` through ``change(bytes) -> bytes``."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name.endswith(suffix):
                data = change(data)
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def as_int8(data: bytes) -> bytes:
    return npy(np.load(io.BytesIO(data)).astype(np.int8))


def one_step_short(data: bytes) -> bytes:
    return npy(np.load(io.BytesIO(data))[:-1])


def pickled(data: bytes) -> bytes:
    return npy(np.array([{"run": "code"}] * 2, dtype=object), allow_pickle=True)


def huge_png(data: bytes) -> bytes:
    """The PNG with its IHDR saying 12000 x 12000: a few kB that would decode to 432 MB (below PIL's own
    limit of 179 M pixels)."""
    ihdr = bytearray(data[12:29])  # type + 13 bytes of IHDR
    ihdr[4:12] = struct.pack(">II", 12000, 12000)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".publish"))
    return dst


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` but ``skip`` -> (kind, size, mtime): what must not change."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def error_line(output: str) -> str:
    """The one error line of a CLI run; no traceback."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def run_measured(args: list) -> tuple[int, str, int]:
    """(exit code, stdout + stderr, peak RSS in kB) of `prefkit ARGS` in a fresh process; the peak is read
    with getrusage(RUSAGE_CHILDREN) by a wrapper whose only child is the CLI."""
    cli = [sys.executable, "-c", "from prefkit.cli.main import main; main()", *map(str, args)]
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([r.returncode, r.stdout + r.stderr, rss]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-c", wrapper, *cli], capture_output=True, text=True, env=env, timeout=600
    )
    assert res.returncode == 0, res.stderr
    code, output, rss = json.loads(res.stdout)
    return code, output, rss


# -- 1. a decompression bomb named like a shard ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / SHARD
    write_gzip_bomb(path, "g00000000_s00.json")
    assert path.stat().st_size < 2_000_000
    return path


def _bombed(labelled_dataset: Path, bomb: Path, dst: Path, labels: bool) -> Path:
    folder = copy_dataset(labelled_dataset, dst)
    for shard in folder.glob("shard-*.tar"):
        shard.unlink()
    shutil.copy(bomb, folder / SHARD)
    if not labels:
        shutil.rmtree(folder / "labels")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command", ["label", "train", "publish"])
def test_gzip_bomb_is_refused_before_decompression(labelled_dataset, bomb, tmp_path, command):
    folder = _bombed(labelled_dataset, bomb, tmp_path / "ds", labels=command != "label")
    out = tmp_path / "out"
    args = {
        "label": ["label", folder, "--source", "jpeg", "--quiet"],
        "train": ["train", folder, "--out", out, "--objective", "d3po", "--max-steps", 1],
        "publish": ["publish", folder, "--repo-id", "me/x", "--dry-run", "--staging", out],
    }[command]
    before = snapshot(tmp_path, out)
    code, output, rss_kb = run_measured(args)
    assert code == 2, output
    line = error_line(output)
    assert f"{folder / SHARD}: a gzip-compressed file, not a plain tar" in line, line
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} kB"
    after = snapshot(tmp_path, out)
    if command == "label":  # the label set would have been written into the dataset: nothing was
        assert after == before
        assert not (folder / "labels").exists()
    else:
        assert after == before
    if command == "publish":
        assert not out.exists()  # no half-built staging folder


def test_member_larger_than_the_manifest_allows_is_refused_unread(labelled_dataset, tmp_path, cli):
    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    shutil.rmtree(folder / "labels")
    write_sparse_member_tar(folder / SHARD, "g00000000_s00.json", BOMB_BYTES)
    before = snapshot(tmp_path, folder / "labels")
    res = cli(["label", folder, "--source", "jpeg", "--quiet"])
    assert res.exit_code == 2
    line = error_line(res.output)
    assert f"{folder / SHARD}: member g00000000_s00.json is {BOMB_BYTES} bytes, more than the" in line
    assert "nothing of it was read" in line
    assert snapshot(tmp_path, folder / "labels") == before


def test_latent_member_bound_comes_from_the_manifest(labelled_dataset):
    from prefkit.shards import NPY_HEADER_MAX, read_manifest, shard_spec

    spec = shard_spec(labelled_dataset)
    sampler = read_manifest(labelled_dataset)["sampler"]
    k1, c, h, w = sampler["latent_shape"]
    assert spec.max_bytes["latents.npy"] == k1 * c * h * w * 2 + NPY_HEADER_MAX  # float16
    assert spec.max_bytes["logprobs.npy"] == (k1 - 1) * 4 + NPY_HEADER_MAX
    assert spec.arrays["timesteps.npy"] == ("float32", (k1 - 1,))  # a flow model (tiny SD3)


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../../escape.json", "is not a sample file KEY.FIELD"),
        ("g00000000_s00.pkl", "is not a sample file KEY.FIELD"),
    ],
)
def test_members_that_are_not_sample_files_are_refused(labelled_dataset, tmp_path, member, problem):
    from prefkit.errors import PrefkitError
    from prefkit.label_sets import dataset_samples

    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    with tarfile.open(folder / SHARD, "a") as tar:
        info = tarfile.TarInfo(member)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(PrefkitError, match="is not a sample file KEY.FIELD") as exc:
        dataset_samples(folder)
    assert str(folder / SHARD) in str(exc.value) and member in str(exc.value) and "\n" not in str(exc.value)


def test_the_annotation_image_index_refuses_a_bomb(labelled_dataset, bomb, tmp_path):
    from prefkit.annotate.images import ImageIndex
    from prefkit.errors import PrefkitError

    folder = _bombed(labelled_dataset, bomb, tmp_path / "ds", labels=True)
    with pytest.raises(PrefkitError, match="a gzip-compressed file, not a plain tar"):
        ImageIndex(folder)


# -- 5. shard contents checked against the manifest ------------------------------------------------------------

BAD_ARRAYS = {
    "int8": ("latents.npy", as_int8, "latents.npy is int8 [3, 16, 16, 16], but the manifest says float16"),
    "shape": ("latents.npy", one_step_short, "latents.npy is float16 [2, 16, 16, 16], but the manifest says"),
    "pickle": (
        "logprobs.npy",
        pickled,
        "logprobs.npy holds Python objects (a pickle, which prefkit never loads)",
    ),
}


def _with_bad_array(labelled_dataset: Path, dst: Path, kind: str) -> tuple[Path, str]:
    field, change, message = BAD_ARRAYS[kind]
    folder = copy_dataset(labelled_dataset, dst)
    rewrite_member(folder / SHARD, "." + field, change)
    return folder, f"{folder / SHARD}: g00000000_s00.{message}"


@pytest.mark.parametrize("kind", sorted(BAD_ARRAYS))
def test_publish_refuses_arrays_that_do_not_match_the_manifest(labelled_dataset, tmp_path, cli, kind):
    folder, expected = _with_bad_array(labelled_dataset, tmp_path / "ds", kind)
    staging = tmp_path / "staging"
    before = snapshot(tmp_path, staging)
    res = cli(["publish", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging])
    assert res.exit_code == 2
    assert expected in error_line(res.output)
    assert not staging.exists()  # nothing half-written
    assert snapshot(tmp_path, staging) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BAD_ARRAYS))
def test_train_refuses_arrays_that_do_not_match_the_manifest(labelled_dataset, tmp_path, cli, kind):
    folder, expected = _with_bad_array(labelled_dataset, tmp_path / "ds", kind)
    run = tmp_path / "run"
    before = snapshot(tmp_path, run)
    res = cli(["train", folder, "--out", run, "--objective", "d3po", "--max-steps", 1])
    assert res.exit_code == 2
    assert expected in error_line(res.output)
    assert snapshot(tmp_path, run) == before


def test_published_trajectories_are_checked_too(labelled_dataset, tmp_path):
    """A published folder's parquet rows go through the same check (train reads them with
    PublishedShardCache)."""
    import pyarrow.parquet as pq

    from prefkit.errors import PrefkitError
    from prefkit.publish import build_folder
    from prefkit.training.trajectories import PublishedShardCache

    staging = tmp_path / "pub"
    build_folder(labelled_dataset, staging, "me/x", val_fraction=0)
    path = staging / "trajectories" / "shard-000000.parquet"
    table = pq.read_table(path)
    column = [as_int8(b) for b in table.column("latents").to_pylist()]
    table = table.set_column(table.schema.get_field_index("latents"), "latents", [column])
    pq.write_table(table, path)
    with pytest.raises(
        PrefkitError, match=r"shard-000000.parquet: g00000000_s00.latents.npy is int8 \[3, 16, 16, 16\], but"
    ):
        PublishedShardCache(staging).get(0, "g00000000_s00")


def test_label_refuses_a_png_bomb_before_decoding(labelled_dataset, tmp_path, cli):
    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    shutil.rmtree(folder / "labels")
    rewrite_member(folder / SHARD, ".png", huge_png)
    res = cli(["label", folder, "--source", "jpeg", "--quiet"])
    assert res.exit_code == 2
    line = error_line(res.output)
    assert f"{folder}: g00000000_s00.png: a 12000 x 12000 image, but the manifest says 32 x 32" in line, line
    assert not (folder / "labels").exists()


def test_an_untouched_dataset_reads_back_whole(labelled_dataset):
    from prefkit.shards import iter_samples

    samples = list(iter_samples(labelled_dataset))
    assert len(samples) == 9
    assert samples[0]["latents"].dtype == np.float16 and samples[0]["image"].size == (32, 32)


# -- 2. publish stages nothing from outside the dataset folder -------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "embeddings/shard-000000.safetensors",
        "manifest.json",
        "labels/jpeg.meta.json",
        "labels/jpeg.jsonl",
        SHARD,
    ],
)
def test_publish_refuses_a_symlink(labelled_dataset, tmp_path, cli, target):
    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    secret = tmp_path / "secret"
    shutil.copy(folder / target, secret)  # the same bytes: only the link can give it away
    (folder / target).unlink()
    (folder / target).symlink_to(secret)
    staging = tmp_path / "staging"
    before = snapshot(tmp_path, staging)
    res = cli(["publish", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging])
    assert res.exit_code == 2
    line = error_line(res.output)
    assert f"{folder / target}: a symbolic link; publish stages only the dataset folder's own files" in line
    assert not staging.exists()
    assert snapshot(tmp_path, staging) == before


def test_publish_refuses_a_folder_that_leads_outside(labelled_dataset, tmp_path, cli):
    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    outside = tmp_path / "elsewhere"
    shutil.move(folder / "embeddings", outside)
    (folder / "embeddings").symlink_to(outside)
    res = cli(["publish", folder, "--repo-id", "me/x", "--dry-run", "--staging", tmp_path / "staging"])
    assert res.exit_code == 2
    assert f"{folder / 'embeddings'}: a symbolic link" in error_line(res.output)
    assert not (tmp_path / "staging").exists()


def test_publish_stages_only_files_of_the_dataset(labelled_dataset, tmp_path):
    from prefkit.publish import build_folder

    staging = tmp_path / "staging"
    build_folder(labelled_dataset, staging, "me/x")
    root = labelled_dataset.resolve()
    for p in staging.rglob("*"):
        assert not p.is_symlink(), p
        if p.is_file() and p.stat().st_nlink > 1:  # a hard link: must be a file of the dataset
            assert any(os.path.samefile(p, q) for q in root.rglob(p.name)), p


# -- 9. the dataset card -------------------------------------------------------------------------------------------

HOSTILE = {
    "model": "<img src=x onerror=alert(1)>",
    "negative": "<script>alert(2)</script> [click](https://evil.example) ![t](https://evil.example/t.png)",
    "format": "</td><b>bold</b>",
    "template": "| broken | table |\n# heading `code",
}


def test_card_escapes_everything_user_controlled(labelled_dataset, tmp_path, cli):
    folder = copy_dataset(labelled_dataset, tmp_path / "ds")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["id"] = HOSTILE["model"]
    manifest["settings"]["negative_prompt"] = HOSTILE["negative"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    meta_path = folder / "labels" / "jpeg.meta.json"
    meta = json.loads(meta_path.read_text())
    votes = tmp_path / "private" / "votes" / "alice.json"
    meta.update(kind="human", format=HOSTILE["format"], inputs=[str(votes), "~/bob.json"])
    meta["judge"] = {"name": "x", "template": HOSTILE["template"]}
    meta_path.write_text(json.dumps(meta))
    staging = tmp_path / "staging"
    res = cli(["publish", folder, "--repo-id", "me/x", "--dry-run", "--staging", staging])
    assert res.exit_code == 0, res.output
    card = (staging / "README.md").read_text()
    body = card.split("---\n", 2)[2]
    for raw in ("<img", "<script", "<b>", "</td>", "click](", "t](https", "| broken |", "\n# heading"):
        assert raw not in card, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in body
    # no absolute local path, in the card nor in the published meta: input files by name
    assert str(tmp_path) not in card and "~/" not in card
    assert "| input files | alice.json, bob.json |" in card
    published_meta = json.loads((staging / "labels" / "jpeg.meta.json").read_text())
    assert published_meta["inputs"] == ["alice.json", "bob.json"]
    # every table row still has its columns: nothing user-controlled broke the table
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| field"):
            assert line.replace("\\|", "").count("|") in (3, 4, 5), line


def test_license_must_be_a_license_identifier(labelled_dataset, tmp_path, cli):
    staging = tmp_path / "staging"
    args = ["publish", labelled_dataset, "--repo-id", "me/x", "--dry-run", "--staging", staging]
    res = cli(args + ["--license", "<script>alert(3)</script>"])
    assert res.exit_code == 2
    assert "--license '<script>alert(3)</script>': expected a license identifier" in error_line(res.output)
    assert not staging.exists()
    res = cli(args + ["--license", "cc-by-4.0"])
    assert res.exit_code == 0, res.output
    card = (staging / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "License: cc-by-4.0." in card


def test_md_text_escapes_html_and_markdown():
    from prefkit.publish import md_text

    assert md_text("<a href='x'>&</a>") == "&lt;a href='x'&gt;&amp;&lt;/a&gt;"
    assert md_text("[x](y) ![i](z) | `c` *b* _i_ \\ #\nz") == (
        "\\[x\\](y) !\\[i\\](z) \\| \\`c\\` \\*b\\* \\_i\\_ \\\\ \\# z"
    )
    assert md_text("tiny-sd3 a red circle, 1.5") == "tiny-sd3 a red circle, 1.5"
