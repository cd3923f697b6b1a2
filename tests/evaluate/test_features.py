"""extract_features on streamed sets decoded by DataLoader workers (issue 11, item 6): the same features in
the same order as in the main process, the same one-line BadImageError, a fallback when workers cannot
start, and the kNN monitor decoding with ``data.num_workers`` processes."""

import pytest
import torch
from bad_images import cut_after_header, write_jpeg
from conftest import simclr_model

from simclr.config import Config, DataConfig
from simclr.data import BadImageError, load_folder
from simclr.evaluate.features import extract_features
from simclr.train import monitor as monitor_module
from simclr.train.monitor import KnnMonitor

CPU = torch.device("cpu")


def streamed_folder(root, per_class: int = 5, bad: str | None = None):
    """Two classes of 150x120 JPEGs, streamed at 32 px (load size 37); ``bad``: one more file in class b
    whose header reads but whose data does not decode."""
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            write_jpeg(root / c / f"{i:03d}.jpg", seed=10 * k + i)
    if bad:
        cut_after_header(write_jpeg(root / "b" / bad, seed=99))
    ds = load_folder(root, DataConfig(image_size=32))
    assert ds.streamed and not ds.bad
    return ds


class WorkersOnly:
    """An image set whose images can only be decoded in a loader worker: proves that the workers did it."""

    images = None

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def get(self, idx):
        if torch.utils.data.get_worker_info() is None:
            raise AssertionError("decoded in the main process")
        return self.ds.get(idx)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return simclr_model().encoder


def test_workers_give_the_same_features_in_the_same_order(tmp_path, encoder):
    ds = streamed_folder(tmp_path)
    order = torch.tensor([7, 2, 9, 0, 5, 3, 8, 1, 6, 4])
    for indices in (None, order):
        ref = extract_features(encoder, ds, 32, CPU, batch_size=3, indices=indices)
        got = extract_features(encoder, WorkersOnly(ds), 32, CPU, batch_size=3, indices=indices, num_workers=2)
        assert got.shape == (10, ref.shape[1]) and torch.equal(got, ref)
    # the order is that of the indices: each row is that image's own features
    alone = torch.cat([extract_features(encoder, ds, 32, CPU, indices=order[i : i + 1]) for i in range(len(order))])
    assert torch.equal(got, alone)
    # with a head: the pair, identical too; train mode is restored
    head = simclr_model().head
    head.train()
    h0, z0 = extract_features(encoder, ds, 32, CPU, batch_size=4, head=head, indices=order)
    h2, z2 = extract_features(encoder, ds, 32, CPU, batch_size=4, head=head, indices=order, num_workers=2)
    assert torch.equal(h0, h2) and torch.equal(z0, z2) and head.training


def test_bad_image_in_a_worker_is_the_same_one_line_error(tmp_path, encoder):
    ds = streamed_folder(tmp_path, per_class=3, bad="cut.jpg")
    errors = []
    for n in (0, 2):
        with pytest.raises(BadImageError) as e:
            extract_features(encoder, ds, 32, CPU, batch_size=2, num_workers=n)
        assert type(e.value) is BadImageError
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert "unreadable image" in errors[1] and "cut.jpg" in errors[1] and "\n" not in errors[1]
    assert "DataLoader" not in errors[1] and "Traceback" not in errors[1]


def test_workers_that_cannot_start_fall_back_to_the_main_process(tmp_path, encoder, monkeypatch, capsys):
    ds = streamed_folder(tmp_path, per_class=2)
    ref = extract_features(encoder, ds, 32, CPU, batch_size=2)

    def no_processes(self):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", no_processes)
    got = extract_features(encoder, ds, 32, CPU, batch_size=2, num_workers=2)
    assert torch.equal(got, ref)
    assert "cannot start 2 data loading workers" in capsys.readouterr().err


def test_knn_monitor_decodes_with_data_num_workers(tmp_path, encoder, monkeypatch):
    ds = streamed_folder(tmp_path, per_class=4)
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("num_workers", 0))
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(monitor_module, "extract_features", spy)
    for n, expected in ((2, [2]), (0, [0])):
        cfg = Config()
        cfg.data.image_size, cfg.data.num_workers, cfg.monitor.knn_k = 32, n, 3
        calls.clear()
        scores = KnnMonitor(cfg, ds, None, CPU, epochs=1)(encoder)
        assert calls == expected and set(scores) == {"knn_top1", "knn_top5"}
    # and the workers really decode: the monitor's features of a set that only a worker can decode
    cfg.data.num_workers = 2
    feats = KnnMonitor(cfg, ds, None, CPU, epochs=1)._features(encoder, WorkersOnly(ds))
    assert torch.equal(feats, extract_features(encoder, ds, 32, CPU))
