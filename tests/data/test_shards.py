"""WebDataset tar shards: the spec, the index, once-per-epoch order over ranks and workers, resume, bad samples."""

import dataclasses
import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("webdataset")

from simclr.config import DataConfig  # noqa: E402
from simclr.data import BadImageError, Batches, DataError, load_dataset  # noqa: E402
from simclr.data.crop import ViewCropper  # noqa: E402
from simclr.data.decode import load_fixed  # noqa: E402
from simclr.data.shards import expand_shards, is_shard_spec, load_shards  # noqa: E402

SIZES = (12, 12, 14, 10)  # images per shard: 48 in all, one shard larger and one smaller
PATTERN = "train-{000000..000003}.tar"


def jpeg(seed: int, size=(120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_tar(path, members):
    """members: (name, bytes) in order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_shards(root, sizes=SIZES, labelled=True, image=jpeg):
    """Shards train-00000S.tar of samples KEY.jpg (+ KEY.cls, label = sample number % 3); the spec pattern."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for s, count in enumerate(sizes):
        members = []
        for i in range(count):
            key = f"s{s}_{i:03d}"
            members.append((f"{key}.jpg", image(n)))
            if labelled:
                members.append((f"{key}.cls", f"{n % 3}\n".encode()))
            n += 1
        write_tar(root / f"train-{s:06d}.tar", members)
    return str(root / f"train-{{000000..{len(sizes) - 1:06d}}}.tar")


@pytest.fixture
def spec(tmp_path):
    return write_shards(tmp_path / "shards")


def streamed(spec, **kw):
    return load_shards(spec, DataConfig(image_size=32, **kw))


def run_epoch(b, epoch=0, start_step=0):
    return [(x.clone(), y.clone(), idx.clone()) for x, y, idx in b.epoch(epoch, start_step)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))


# -- the spec and the index -------------------------------------------------------------------

def test_spec_forms(tmp_path, spec):
    root = tmp_path / "shards"
    assert is_shard_spec(spec) and is_shard_spec(str(root / "train-000000.tar")) and is_shard_spec("a.tar::b.tar")
    assert is_shard_spec(str(root))  # a folder holding only shards
    assert not is_shard_spec(str(tmp_path)) and not is_shard_spec("cifar10")  # it holds a subfolder
    paths = [str(root / f"train-{s:06d}.tar") for s in range(4)]
    assert expand_shards(spec) == paths == expand_shards(str(root))
    assert expand_shards(f"{paths[3]}::{root}/train-{{000000..000001}}.tar") == [paths[3]] + paths[:2]


def test_index_labels_and_names(spec):
    ds = streamed(spec)
    assert len(ds) == 48 and ds.streamed and ds.images is None and ds.paths is None
    assert ds.load_size == 37 and ds.side == 37 and ds.bad == []
    assert ds.labels.tolist() == [i % 3 for i in range(48)] and ds.classes == ["0", "1", "2"] and ds.has_labels
    names = ds.names()
    assert names[0] == os.path.join(os.path.dirname(spec), "train-000000.tar") + "#s0_000"
    assert names[12].endswith("train-000001.tar#s1_000") and len(set(names)) == 48
    # random access for evaluation: the image at load size, as a file of the same bytes would give
    x = ds.get(torch.tensor([0, 47]))
    assert x.shape == (2, 3, 37, 37) and x.dtype == torch.uint8
    assert torch.equal(x[1], load_fixed(io.BytesIO(jpeg(47)), 37))
    sub = ds.subset(torch.tensor([5, 47]))
    assert sub.names() == [names[5], names[47]] and torch.equal(sub.get(torch.tensor([1])), x[1:])


def test_unlabelled_shards_and_max_per_class(tmp_path):
    ds = streamed(write_shards(tmp_path / "u", sizes=(3, 3), labelled=False))
    assert ds.labels.tolist() == [-1] * 6 and ds.classes == [] and not ds.has_labels
    ds = load_shards(write_shards(tmp_path / "l"), DataConfig(image_size=32, max_per_class=2))
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2] and [n.rsplit("#", 1)[1] for n in ds.names()][:3] == ["s0_000", "s0_001", "s0_002"]


def test_small_images_are_held_in_memory(tmp_path):
    spec = write_shards(tmp_path / "s", sizes=(5, 3), image=lambda n: jpeg(n, (24, 20)))
    ds = load_dataset(spec, DataConfig())
    assert not ds.streamed and ds.images.shape == (8, 3, 24, 24) and ds.side == 24
    assert ds.names()[7].endswith("train-000001.tar#s1_002")
    b = Batches(ds, 4, seed=0)
    assert b.num_workers == 0 and sorted(torch.cat([i for _, _, i in b.epoch(0)]).tolist()) == list(range(8))


# -- one epoch: each image once, over workers and ranks ---------------------------------------

def test_epoch_sees_each_image_once_with_workers(spec):
    ds = streamed(spec)
    cropper = ViewCropper(32)
    b = Batches(ds, 8, seed=0, num_workers=2, cropper=cropper)
    assert len(b) == 6
    out = run_epoch(b)
    assert len(out) == 6 and all(x.shape == (8, 2, 3, 32, 32) and x.dtype == torch.uint8 for x, _, _ in out)
    idx = torch.cat([i for _, _, i in out])
    assert sorted(idx.tolist()) == list(range(48))
    assert all(torch.equal(y, ds.labels[i]) for _, y, i in out)
    # the workers and the main process cut the same views: the order does not depend on num_workers
    assert same(out, run_epoch(Batches(ds, 8, seed=0, num_workers=0, cropper=cropper)))


@pytest.mark.parametrize("batch", [4, 5])
def test_ranks_together_see_each_image_once_with_equal_steps(spec, batch):
    ds = streamed(spec)
    ranks = [run_epoch(Batches(ds, batch, seed=1, num_workers=2, rank=r, world_size=2)) for r in range(2)]
    steps = 48 // (2 * batch)
    assert len(ranks[0]) == len(ranks[1]) == steps == len(Batches(ds, batch, seed=1, rank=1, world_size=2))
    assert all(len(i) == batch for r in ranks for _, _, i in r)
    seen = torch.cat([i for r in ranks for _, _, i in r]).tolist()
    assert len(seen) == len(set(seen)) == steps * 2 * batch  # the final partial global batch is dropped
    # the global batches are those of a single process: rank r holds every second image of each
    single = run_epoch(Batches(ds, 2 * batch, seed=1, num_workers=0))
    for s, (_, _, i) in enumerate(single):
        assert torch.equal(i[0::2], ranks[0][s][2]) and torch.equal(i[1::2], ranks[1][s][2])


# -- the order: a pure function of (seed, epoch); exact resume ---------------------------------

def test_order_is_seeded_and_changes_per_epoch(spec):
    ds = streamed(spec)
    b = Batches(ds, 8, seed=3, num_workers=2)
    e0 = run_epoch(b, 0)
    assert same(e0, run_epoch(Batches(dataclasses.replace(ds), 8, seed=3, num_workers=2), 0))
    e1 = [i.tolist() for _, _, i in run_epoch(b, 1)]
    assert [i.tolist() for _, _, i in e0] != e1
    assert [i.tolist() for _, _, i in run_epoch(Batches(ds, 8, seed=4, num_workers=0), 0)] != [i.tolist() for _, _, i in e0]


def test_shards_are_shuffled_per_epoch_then_a_window(spec):
    index = streamed(spec).shards
    shard_of = index.shard
    # window 1 keeps each shard's samples together, in tar order: the shard order alone
    runs = []
    for epoch in range(6):
        o = index.order(0, epoch, window=1).numpy()
        s = shard_of[o]
        assert (np.diff(s) != 0).sum() == 3  # four contiguous runs
        assert all((np.diff(o[s == k]) == 1).all() for k in range(4))
        runs.append(tuple(s[np.r_[0, np.nonzero(np.diff(s))[0] + 1]]))
    assert len(set(runs)) > 1  # the shard order changes with the epoch
    # a window of 8 moves samples by less than 8 + ... positions; the default window mixes these 48 samples
    o = index.order(0, 0, window=8).numpy()
    stream = index.order(0, 0, window=1).numpy()
    pos = {v: p for p, v in enumerate(stream)}
    assert max(abs(p - pos[v]) for p, v in enumerate(o)) < 8 and not (o == stream).all()
    assert sorted(index.order(0, 0).tolist()) == list(range(48))


def test_resume_continues_exactly_without_decoding_the_skipped(spec):
    ds = streamed(spec)
    calls = []

    class Counting(ViewCropper):
        def __call__(self, src, generator=None):
            calls.append(1)
            return super().__call__(src, generator)

    full = run_epoch(Batches(ds, 8, seed=2, num_workers=2, cropper=ViewCropper(32)), 1)
    fresh = dataclasses.replace(ds, bad=[])
    tail = run_epoch(Batches(fresh, 8, seed=2, num_workers=0, cropper=Counting(32)), 1, start_step=4)
    assert same(full[4:], tail) and len(calls) == 2 * 8  # only the two steps left were decoded
    assert same(full[2:], run_epoch(Batches(fresh, 8, seed=2, num_workers=2, cropper=ViewCropper(32)), 1, start_step=2))


# -- bad samples ------------------------------------------------------------------------------

def cut(data: bytes) -> bytes:
    return data[: data.index(b"\xff\xda") + 64]  # the header reads, decoding fails


def broken_shards(root):
    """The four shards, with s1_003 truncated after its header and s2_005 replaced by garbage."""
    def image(n):
        return cut(jpeg(n)) if n == 15 else (os.urandom(2000) if n == 29 else jpeg(n))

    return write_shards(root, image=image)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_replaced_and_recorded(tmp_path, workers):
    spec = broken_shards(tmp_path / "b")
    ds = streamed(spec)
    assert len(ds) == 48 and ds.bad == []  # found only when decoded
    b = Batches(ds, 8, seed=0, num_workers=workers, cropper=ViewCropper(32))
    out = run_epoch(b)
    assert len(out) == 6 and all(x.shape[0] == 8 for x, _, _ in out)
    root = os.path.dirname(spec)
    assert sorted(n for n, _ in ds.bad) == [os.path.join(root, "train-000001.tar#s1_003"),
                                             os.path.join(root, "train-000002.tar#s2_005")]
    assert all(why and "\n" not in why for _, why in ds.bad)
    seen = torch.cat([i for _, _, i in out]).tolist()
    assert 15 not in seen and 29 not in seen and len(seen) == 48  # replaced by the next decodable samples
    assert same(out, run_epoch(b)) and len(ds.bad) == 2  # known bad: same batches, listed once


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_raises_on_a_bad_sample(tmp_path, workers):
    spec = broken_shards(tmp_path / "b")
    with pytest.raises(BadImageError) as e:
        run_epoch(Batches(streamed(spec, strict=True), 8, seed=0, num_workers=workers, cropper=ViewCropper(32)))
    msg = str(e.value)
    assert msg.startswith("unreadable image ") and "\n" not in msg and "worker" not in msg
    assert "train-000001.tar#s1_003: " in msg or "train-000002.tar#s2_005: " in msg


def test_truncated_and_damaged_shards_are_listed_at_indexing(tmp_path):
    write_shards(tmp_path / "t")
    root = tmp_path / "t"
    data = (root / "train-000003.tar").read_bytes()
    (root / "train-000003.tar").write_bytes(data[: data.index(b"s3_009.jpg") + 600])  # s3_009's data is cut
    shard1 = root / "train-000001.tar"
    data = bytearray(shard1.read_bytes())
    at = data.index(b"s1_006.jpg")
    data[at : at + 512] = os.urandom(512)  # a broken header: the rest of the shard is lost
    shard1.write_bytes(bytes(data))
    ds = streamed(str(root / PATTERN))
    names = [n for n, _ in ds.bad]
    assert names[0] == f"{shard1}#@{at}" and "damaged tar header" in ds.bad[0][1]
    assert names[1] == f"{root / 'train-000003.tar'}#s3_009" and "truncated" in ds.bad[1][1]
    assert len(ds) == 48 - 6 - 1
    with pytest.raises(BadImageError, match="damaged tar header"):
        streamed(str(root / PATTERN), strict=True)


def test_an_image_cut_after_indexing(tmp_path):
    spec = write_shards(tmp_path / "c", sizes=(4, 4))
    ds = streamed(spec)
    last = tmp_path / "c" / "train-000001.tar"
    data = last.read_bytes()
    last.write_bytes(data[: data.index(b"s1_002.jpg")])
    with pytest.raises(BadImageError, match="s1_003: the shard ends .* early"):
        ds.get(torch.tensor([7]))
    out = run_epoch(Batches(ds, 2, seed=0, num_workers=0))
    assert len(out) == 4 and {n.rsplit("#", 1)[1] for n, _ in ds.bad} == {"s1_002", "s1_003"}


# -- errors: one line each --------------------------------------------------------------------

def test_spec_errors_are_one_line(tmp_path, spec):
    root = tmp_path / "shards"
    write_tar(root / "empty.tar", [])
    write_tar(root / "meta.tar", [("__meta__.json", b"{}"), ("a.txt", b"x")])
    (root / "zero.tar").write_bytes(b"")
    (root / "text.tar").write_bytes(b"hello" * 300)
    write_tar(root / "cls.tar", [("a.jpg", jpeg(0)), ("a.cls", b"cat")])
    cases = [
        (str(root / "train-{000000..000004}.tar"), "shard not found: .*train-000004.tar"),
        (str(root / "missing-{0..2}.tar"), r"shard not found: .*missing-0.tar \(and 2 more of the 3 shards\)"),
        (str(root / "train-{000000..000003.tar"), "bad shard pattern .*Unbalanced braces"),
        (str(root / "empty.tar"), "holds no images"),
        (str(root / "meta.tar"), "holds no images"),
        (str(root / "zero.tar"), r"empty shard \(0 bytes\)"),
        (str(root / "text.tar"), "not an uncompressed tar file"),
        (str(root / "cls.tar"), "its .cls holds 'cat', not a label"),
        (str(root / "train-000000.tar.gz"), "compressed shards cannot be read by offset"),
        ("https://host/train-{0..3}.tar", "not URLs"),
        (f"{spec}::{root / 'train-000001.tar'}", "listed twice"),
        (f"{spec}::{root}", "not a .tar shard"),
    ]
    for s, match in cases:
        with pytest.raises(DataError, match=match) as e:
            load_dataset(s, DataConfig(image_size=32))
        assert "\n" not in str(e.value), s


def test_missing_webdataset_package(spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r"pip install 'simclr\[shards\]'") as e:
        load_dataset(spec, DataConfig(image_size=32))
    assert "\n" not in str(e.value)


# -- pretraining end to end -------------------------------------------------------------------

def pretrain(spec, out, *extra, size="32"):
    from simclr.cli import main

    args = ["pretrain", "--data", spec, "--data.image_size", size, "--arch", "resnet18", "--width", "0.125",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--data.num_workers", "2",
            "--train.progress", "false", "--monitor.knn_every", "0", "--out", str(out), *extra]
    assert main(args) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_from_shards(tmp_path):
    spec = write_shards(tmp_path / "shards", sizes=(5, 4, 3, 4))  # 16 images: 2 steps of 8
    (rec,) = pretrain(spec, tmp_path / "run", size="16")
    assert rec["images"] == 16 and rec["step"] == 2
    assert "train-{000000..000003}.tar" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_pretrain_from_shards_and_resume(tmp_path, spec):
    run = tmp_path / "run"
    recs = pretrain(spec, run, "--epochs", "2")
    assert [r["images"] for r in recs] == [48, 48] and recs[-1]["step"] == 12
    recs = pretrain(spec, run, "--epochs", "3", "--resume")
    assert [r["images"] for r in recs] == [48, 48, 48] and recs[-1]["step"] == 18


@pytest.mark.slow
def test_moved_shards_resume_and_views_read_them(tmp_path):
    """The data fingerprint names shard files, not their folder: moved shards still resume; `simclr views`
    shows the whole frame of a streamed shard sample."""
    import numpy as np

    from simclr.cli import main

    spec = write_shards(tmp_path / "shards", sizes=(5, 4, 3, 4))
    pretrain(spec, tmp_path / "run", size="16")
    (tmp_path / "shards").rename(tmp_path / "moved")
    moved = spec.replace(str(tmp_path / "shards"), str(tmp_path / "moved"))
    recs = pretrain(moved, tmp_path / "run", "--epochs", "2", "--resume", size="16")
    assert [r["images"] for r in recs] == [16, 16]
    out = tmp_path / "views"
    assert main(["views", "--data", moved, "--out", str(out), "--n", "8", "--batch-size", "8", "--data.image_size", "16",
                 "--data.num_workers", "0"]) == 0
    assert np.load(out / "views.npy").shape == (8, 2, 3, 16, 16) and (out / "views.png").is_file()
