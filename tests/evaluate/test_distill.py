"""Distillation (SimCLRv2 section 2.3): the loss against a float64 transcription of eq. 3, the teacher seeing the
student's views, the fine-tuned network saved and rebuilt exactly, the command and its misuse."""

import json

import pytest
import torch

from simclr.cli import main
from simclr.evaluate.distill import distill, distill_loss
from simclr.evaluate.finetune import FINETUNED, Classifier, load_finetuned, save_finetuned
from simclr.model.head import ProjectionHead
from simclr.model.resnet import resnet18

SYN = ["--data.synthetic_train", "200", "--data.synthetic_test", "100"]


def _eq3(student, teacher, t, labels=None, labelled=None, w=0.0):
    """SimCLRv2 eq. 3 per batch in float64, term by term: -(1-w) mean_x sum_y P_T log P_S - w mean_labelled log P_S(y)."""
    s, te = student.double(), teacher.double()
    n, c = s.shape
    total = 0.0
    for i in range(n):
        pt = torch.exp(te[i] / t) / torch.exp(te[i] / t).sum()
        log_ps = s[i] / t - torch.log(torch.exp(s[i] / t).sum())
        total = total - sum(pt[y] * log_ps[y] for y in range(c))
    soft = total / n
    if w == 0:
        return soft
    idx = [i for i in range(n) if labelled[i]]
    hard = -sum(s[i, labels[i]] - torch.log(torch.exp(s[i]).sum()) for i in idx) / len(idx)
    return (1 - w) * soft + w * hard


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_distill_loss_equals_eq3(t):
    torch.manual_seed(0)
    s, te = torch.randn(6, 5, dtype=torch.float64, requires_grad=True), torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(distill_loss(s, te, t).double(), _eq3(s, te, t), rtol=0, atol=1e-6)
    labels, labelled = torch.randint(0, 5, (6,)), torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    ours = distill_loss(s, te, t, labels, labelled, 0.3)
    ref = _eq3(s, te, t, labels, labelled, 0.3)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-6)
    g1, = torch.autograd.grad(ours, s)
    g2, = torch.autograd.grad(ref, s)
    torch.testing.assert_close(g1.double(), g2, rtol=0, atol=1e-6)
    # the distillation term is minimal, over students, at the teacher's own logits (cross-entropy >= entropy)
    assert distill_loss(te, te, t) < distill_loss(te + 0.3 * torch.randn_like(te), te, t)
    # a batch with no labelled image: the soft term alone, scaled
    none = torch.zeros(6, dtype=torch.bool)
    torch.testing.assert_close(distill_loss(s, te, t, labels, none, 0.3), 0.7 * distill_loss(s, te, t))


def test_the_teacher_sees_the_students_view_and_the_student_learns_it():
    from simclr.config import DataConfig
    from simclr.data import load_dataset

    data = load_dataset("synthetic", DataConfig(image_size=16, synthetic_train=64, synthetic_test=32, max_per_class=0))
    test = load_dataset("synthetic:test", DataConfig(image_size=16, synthetic_train=64, synthetic_test=32))
    torch.manual_seed(0)
    teacher = Classifier(resnet18(width=0.125, cifar_stem=True), len(data.classes)).eval()
    seen = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))
    student = Classifier(resnet18(width=0.0625, cifar_stem=True), len(data.classes))
    student.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone()) if m.training else None)
    before = _agreement(student.eval(), teacher, test)
    seen["teacher"].clear()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = distill(teacher, student, data, test, 16, torch.device("cpu"), epochs=8, batch_size=32, base_lr=0.4, log=lambda *_: None)
    n = 8 * 2
    assert len(seen["student"]) == n and len(seen["teacher"]) >= n
    for a, b in zip(seen["student"], seen["teacher"][:n]):
        assert torch.equal(a, b)  # the same augmented views, not new draws
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())  # not trained, BN statistics kept
    assert 0 <= res["top1"] <= 1 and res["teacher_top1"] == pytest.approx(_top1(teacher, test))
    assert _agreement(student.eval(), teacher, test) > before  # the student moved towards the teacher


def _logits(m, test):
    with torch.no_grad():
        return m(test.get(torch.arange(len(test))).float() / 255)


def _agreement(student, teacher, test):
    return float((_logits(student, test).argmax(1) == _logits(teacher, test).argmax(1)).float().mean())


def _top1(m, test):
    return float((_logits(m, test).argmax(1) == test.labels).float().mean())


@pytest.mark.parametrize("head_layers", [0, 2])
def test_a_finetuned_network_is_rebuilt_exactly(tmp_path, head_layers):
    torch.manual_seed(0)
    enc = resnet18(width=0.125, cifar_stem=True, sk_ratio=0.0625, stage1_projection=True)
    head = ProjectionHead(enc.num_features, num_layers=3, hidden_dim=24, out_dim=8) if head_layers else None
    model = Classifier(enc, 4, head, head_layers).eval()
    for p in model.parameters():
        p.data.uniform_(-0.3, 0.3)
    save_finetuned(tmp_path / FINETUNED, model, ["a", "b", "c", "d"], 16, None)
    again, meta = load_finetuned(tmp_path)
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert meta["classes"] == ["a", "b", "c", "d"] and meta["image_size"] == 16 and meta["encoder"]["sk_ratio"] == 0.0625


def test_finetune_then_distill_from_the_command_line(tiny_run, tmp_path, capsys):
    ft, st = tmp_path / "ft", tmp_path / "st"
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test", *SYN,
                 "--label-fraction", "0.2", "--epochs", "1", "--out", str(ft), "--from-head-layer", "1"]) == 0
    assert (ft / FINETUNED).is_file()
    teacher, meta = load_finetuned(ft)
    assert meta["head_layers"] == 1 and teacher.fc.in_features == teacher.head.layers[0][0].out_features
    capsys.readouterr()
    assert main(["distill", "--teacher", str(ft), "--data", "synthetic", "--test-data", "synthetic:test", *SYN, "--epochs", "1",
                 "--width", "0.0625", "--labels-weight", "0.5", "--out", str(st), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["top1"] <= res["top5"] <= 1 and res["width"] == 0.0625 and res["labels_weight"] == 0.5
    student, smeta = load_finetuned(st)
    assert smeta["encoder"]["width"] == 0.0625 and json.loads((st / "distill.json").read_text())["top1"] == res["top1"]
    # the student can teach in turn (a distilled network is a teacher like a fine-tuned one)
    assert main(["distill", "--teacher", str(st), "--data", "synthetic", "--test-data", "synthetic:test", *SYN, "--epochs", "1",
                 "--out", str(tmp_path / "st2")]) == 0


@pytest.mark.parametrize("extra,msg", [
    ([], "needs --teacher"),
    (["--teacher", "NOWHERE"], "no fine-tuned network"),
    (["--teacher", "FT", "--out", "FT"], "the teacher's folder"),
    (["--teacher", "FT", "--arch", "resnet19"], "did you mean"),
    (["--teacher", "FT", "--labels-weight", "1.5"], "labels_weight"),
    (["--teacher", "FT", "--test-data", "synthetic:test", "--data.synthetic_test", "0"], "synthetic_test"),
    (["--teacher", "FT/finetuned.safetensors", "--out", "FT"], "the teacher's folder"),
    (["--teacher", "FT", "--out", "HELD"], "already holds a network"),
])
def test_distill_misuse_is_one_line(tiny_run, tmp_path, capsys, extra, msg):
    ft = tmp_path / "FT"
    if any(a.startswith("FT") for a in extra):
        ft.mkdir()
        save_finetuned(ft / FINETUNED, Classifier(resnet18(width=0.125, cifar_stem=True), 10).eval(),
                       [str(i) for i in range(10)], 16, None)
    held = tmp_path / "HELD"
    held.mkdir()
    (held / FINETUNED).write_bytes(b"an earlier student")
    args = [str(tmp_path / a) if a.split("/")[0] in ("FT", "HELD") else a for a in extra]
    before = (ft / FINETUNED).read_bytes() if (ft / FINETUNED).exists() else None
    if "--out" not in args:
        args += ["--out", str(tmp_path / "st")]
    if "--test-data" not in args:
        args += ["--test-data", "synthetic:test"]
    code = main(["distill", "--data", "synthetic", *SYN, "--epochs", "1", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "st" / FINETUNED).exists()
    assert (held / FINETUNED).read_bytes() == b"an earlier student"  # nothing overwritten
    if before is not None:
        assert (ft / FINETUNED).read_bytes() == before


@pytest.mark.parametrize("change", [{"image_size": None}, {"classes": 5}, {"image_size": "abc"}, {"image_size": -5},
                                    {"classes": [str(i) for i in range(12)]}, {"crop_fraction": 7}])
def test_a_teacher_with_odd_metadata_is_refused_in_one_line(tmp_path, capsys, change):
    import json as js

    from safetensors.torch import load_file, save_file

    ft = tmp_path / "ft"
    ft.mkdir()
    save_finetuned(ft / FINETUNED, Classifier(resnet18(width=0.125, cifar_stem=True), 10).eval(), [str(i) for i in range(10)], 16, None)
    from safetensors import safe_open

    with safe_open(str(ft / FINETUNED), framework="pt") as f:
        meta = js.loads(f.metadata()["simclr"])
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file(load_file(str(ft / FINETUNED)), str(ft / FINETUNED), metadata={"simclr": js.dumps(meta)})
    code = main(["distill", "--teacher", str(ft), "--data", "synthetic", *SYN, "--test-data", "synthetic:test", "--epochs", "1",
                 "--out", str(tmp_path / "st")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not a network saved by simclr finetune/distill" in err, err


def test_finetune_finds_a_blocked_output_before_training(tiny_run, tmp_path, capsys):
    out = tmp_path / "ft"
    (out / FINETUNED).mkdir(parents=True)
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test", *SYN,
                 "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder where finetune writes a file" in err
    assert sorted(p.name for p in out.iterdir()) == [FINETUNED]  # nothing written
