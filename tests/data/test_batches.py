"""Training batches: determinism, drop_last, and streamed files that fail only while training."""

import dataclasses
import os
import signal

import pytest
import torch

from bad_images import cut_after_header, write_jpeg
from simclr.config import DataConfig
from simclr.data import BadImageError, Batches, DataError, load_folder, synthetic_images
from simclr.data import batches as batches_module


def test_batches_deterministic_and_drop_last():
    ds = synthetic_images(10, seed=0, size=8)
    b = Batches(ds, 3, seed=5)
    assert len(b) == 3
    e0 = [idx.tolist() for _, _, idx in b.epoch(0)]
    assert e0 == [idx.tolist() for _, _, idx in b.epoch(0)]
    assert e0 != [idx.tolist() for _, _, idx in b.epoch(1)]
    assert len({i for idx in e0 for i in idx}) == 9
    # resuming mid-epoch yields the remaining batches
    assert [idx.tolist() for _, _, idx in b.epoch(0, start_step=1)] == e0[1:]
    x, y, idx = next(iter(b.epoch(0)))
    torch.testing.assert_close(x, ds.images[idx])
    torch.testing.assert_close(y, ds.labels[idx])


def test_ranks_share_each_global_batch():
    ds = synthetic_images(12, seed=0, size=8)
    r0 = [idx for _, _, idx in Batches(ds, 3, seed=1, rank=0, world_size=2).epoch(0)]
    r1 = [idx for _, _, idx in Batches(ds, 3, seed=1, rank=1, world_size=2).epoch(0)]
    assert len(r0) == len(r1) == 2
    assert sorted(torch.cat(r0 + r1).tolist()) == list(range(12))


def test_dataset_smaller_than_batch():
    with pytest.raises(DataError, match="fewer than one batch"):
        Batches(synthetic_images(4, seed=0, size=8), 8, seed=0)


def test_in_memory_sets_use_no_workers():
    assert Batches(synthetic_images(8, seed=0, size=8), 2, seed=0).num_workers == 0  # in memory: no workers


def test_large_images_stream_in_batches(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(4):
        write_jpeg(tmp_path / "c" / f"{i}.jpg", seed=i)
    ds = load_folder(tmp_path, DataConfig(image_size=64))
    b = Batches(ds, 2, seed=0, num_workers=0)
    batches = list(b.epoch(0))
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 74, 74)
    assert Batches(ds, 2, seed=0).num_workers >= 1  # None: config auto


# -- streamed files that break after indexing -------------------------------------------------

BAD = ("cut.jpg", "deleted.jpg", "emptied.jpg", "garbage.jpg")


def broken_folder(root):
    """14 indexed 150x120 JPEGs (streamed), 4 of which fail only when decoded, plus an empty file
    that the folder scan already skips."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(10):
        write_jpeg(root / ("a" if i % 2 else "b") / f"{i:02d}.jpg", seed=i)
    for i, name in enumerate(BAD):
        write_jpeg(root / "a" / name, seed=100 + i)
    cut_after_header(root / "a" / "cut.jpg")
    (root / "b" / "empty.jpg").write_bytes(b"")
    ds = load_folder(root, DataConfig(image_size=32))
    assert ds.streamed and len(ds) == 14 and [os.path.basename(p) for p, _ in ds.bad] == ["empty.jpg"]
    os.remove(root / "a" / "deleted.jpg")
    (root / "a" / "emptied.jpg").write_bytes(b"")
    (root / "a" / "garbage.jpg").write_bytes(os.urandom(3000))
    return ds


def run_epoch(b, epoch=0, start_step=0):
    return [(x.clone(), y.clone(), idx.clone()) for x, y, idx in b.epoch(epoch, start_step)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_bad_files_are_replaced_and_reported(tmp_path, workers):
    ds = broken_folder(tmp_path)
    b = Batches(ds, 7, seed=3, num_workers=workers)
    first = run_epoch(b)
    assert len(first) == 2 and all(x.shape == (7, 3, 37, 37) for x, _, _ in first)
    names = [os.path.basename(p) for p, _ in ds.bad]
    assert sorted(names) == sorted(("empty.jpg",) + BAD)  # each once
    assert all(why and "\n" not in why for _, why in ds.bad)
    reasons = {os.path.basename(p): why for p, why in ds.bad}
    assert reasons["deleted.jpg"] == "file not found" and reasons["emptied.jpg"] == "empty file"
    assert reasons["cut.jpg"].startswith("cannot decode")
    # the batches hold real images of good files, with their own labels
    good = {i for i, p in enumerate(ds.paths) if os.path.basename(p) not in BAD}
    for x, y, idx in first:
        assert set(idx.tolist()) <= good
        assert torch.equal(y, ds.labels[idx]) and torch.equal(x, ds.get(idx))
    # same epoch again (bad files now known): identical; and again with the knowledge lost (a resume)
    assert same(first, run_epoch(b))
    fresh = dataclasses.replace(ds, bad=[])
    assert same(first, run_epoch(Batches(fresh, 7, seed=3, num_workers=workers)))
    assert same(first[1:], run_epoch(Batches(fresh, 7, seed=3, num_workers=workers), start_step=1))
    assert sorted(os.path.basename(p) for p, _ in fresh.bad) == sorted(BAD)
    run_epoch(b, 1)
    assert len(ds.bad) == 5  # no duplicates across epochs


def test_workers_and_main_process_agree(tmp_path):
    ds = broken_folder(tmp_path)
    a = run_epoch(Batches(dataclasses.replace(ds, bad=[]), 7, seed=4, num_workers=0))
    assert same(a, run_epoch(Batches(dataclasses.replace(ds, bad=[]), 7, seed=4, num_workers=2)))


def test_known_bad_files_are_not_decoded_again(tmp_path, monkeypatch):
    ds = broken_folder(tmp_path)
    tried = []
    real = batches_module.load_fixed

    def counting(path, *a):
        tried.append(os.path.basename(path))
        return real(path, *a)

    monkeypatch.setattr(batches_module, "load_fixed", counting)
    b = Batches(ds, 7, seed=0, num_workers=0)
    run_epoch(b, 0)
    assert all(tried.count(n) == 1 for n in BAD)
    tried.clear()
    run_epoch(b, 1)
    assert not set(tried) & set(BAD) and len(tried) == 14  # one decode per slot


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_raises_in_the_main_process(tmp_path, workers):
    ds = broken_folder(tmp_path)
    with pytest.raises(BadImageError) as e:
        run_epoch(Batches(ds, 7, seed=3, num_workers=workers, strict=True))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg and "worker" not in msg
    assert msg.startswith("unreadable image ") and any(f"{os.sep}{n}: " in msg for n in BAD)
    assert isinstance(e.value, DataError)


def test_non_utf8_streamed_bad_file(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(3):
        write_jpeg(tmp_path / "c" / f"{i}.jpg", seed=i)
    cut = cut_after_header(write_jpeg(tmp_path / "c" / os.fsdecode(b"\xff\xfe.jpg")))
    ds = load_folder(tmp_path, DataConfig(image_size=32))
    assert len(run_epoch(Batches(ds, 2, seed=0, num_workers=2, shuffle=False))) == 2
    assert ds.bad == [(str(cut), ds.bad[0][1])]
    with pytest.raises(BadImageError) as e:
        run_epoch(Batches(dataclasses.replace(ds, bad=[]), 2, seed=0, num_workers=0, shuffle=False, strict=True))
    assert "\\xff\\xfe.jpg" in str(e.value)
    str(e.value).encode("utf-8")


def test_no_decodable_image_is_a_data_error(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(2):
        write_jpeg(tmp_path / "c" / f"{i}.jpg", seed=i)
    ds = load_folder(tmp_path, DataConfig(image_size=32))
    for p in ds.paths:
        os.remove(p)
    with pytest.raises(DataError, match="none of the 2 images"):
        run_epoch(Batches(ds, 2, seed=0, num_workers=0))


# -- worker processes and signals -------------------------------------------------------------

def streamed(tmp_path, n=4):
    (tmp_path / "c").mkdir()
    for i in range(n):
        write_jpeg(tmp_path / "c" / f"{i}.jpg", seed=i)
    return load_folder(tmp_path, DataConfig(image_size=32))


def test_workers_ignore_termination_signals(tmp_path, monkeypatch):
    ds = streamed(tmp_path)
    main_handlers = [signal.getsignal(s) for s in batches_module.WORKER_IGNORED_SIGNALS]

    def probe(path, size, max_pixels):
        # a scheduler signalling the whole process group: the worker must survive it
        for s in batches_module.WORKER_IGNORED_SIGNALS:
            os.kill(os.getpid(), s)
        ignored = all(signal.getsignal(s) == signal.SIG_IGN for s in batches_module.WORKER_IGNORED_SIGNALS)
        return torch.full((3, size, size), 7 if ignored else 0, dtype=torch.uint8)

    monkeypatch.setattr(batches_module, "load_fixed", probe)
    out = run_epoch(Batches(ds, 2, seed=0, num_workers=2))
    assert len(out) == 2 and all((x == 7).all() for x, _, _ in out)
    assert [signal.getsignal(s) for s in batches_module.WORKER_IGNORED_SIGNALS] == main_handlers
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= set(batches_module.WORKER_IGNORED_SIGNALS)


def test_dead_worker_is_a_one_line_data_error(tmp_path, monkeypatch):
    ds = streamed(tmp_path)

    def die(path, size, max_pixels):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(batches_module, "load_fixed", die)
    with pytest.raises(DataError, match="data loading worker failed") as e:
        run_epoch(Batches(ds, 2, seed=0, num_workers=2))
    assert "\n" not in str(e.value)
