"""Distillation guarded like QAT: a run that blew up and did not come back is thrown away and the
fresh student trained again at a lower learning rate; the record keeps every attempt."""

from __future__ import annotations

import torch

from edgekd.config import load_profile, load_target
from edgekd.data import limit, with_validation
from edgekd.models import create_model
from edgekd.runfolder import RunFolder
from edgekd.stages import StageContext
from edgekd.stages import distill
from edgekd.stages.distill import DistillStage, diverged

# the distill stage's epoch losses of a real run that diverged (benchmarks/own_data.py, 2,000-image
# train/val/test tree, default profile, seed 0: 15.5% after distillation): epochs 1, 11, ..., 151,
# the best (29) and the last (160) of its 160
DIVERGED_RUN = [23.9, 11.5, 11.35, 7.44, 12.86, 157.99, 24.16, 24.08, 23.63, 23.68, 23.49, 22.97, 21.71, 23.05, 22.26, 21.62, 21.14, 21.11]
HEALTHY_RUN = [2.23, 1.67, 1.22, 1.36, 0.85, 0.75, 0.75, 0.74, 0.65, 0.77, 0.75, 0.70]  # the teacher's first epochs


def test_a_loss_that_blew_up_and_stayed_is_divergence_and_a_noisy_descent_is_not():
    assert diverged(DIVERGED_RUN) and "7.44" in diverged(DIVERGED_RUN) and "epoch 4)" in diverged(DIVERGED_RUN)
    assert diverged(HEALTHY_RUN) is None
    assert diverged([5.0, 9.0, 12.0]) is None  # too short to judge: no best epoch to fall back from


def test_a_diverged_distillation_is_retrained_from_the_fresh_student_at_a_lower_lr(fashion, tmp_path, monkeypatch):
    """Real training on 1,024 images, with the criterion planted (any run counts as diverged): each
    attempt restarts from the fresh student at a quarter of the learning rate, the last one is
    kept and the record says it still diverged."""
    data = limit(with_validation(fashion, 0.1, seed=0), 1024, 256, 256)
    smoke = load_profile("smoke")
    profile = smoke.model_copy(update={"distill": smoke.distill.model_copy(update={"epochs": 4, "compile": False})})
    torch.manual_seed(0)
    teacher = create_model("edgekd_resnet", 10, (1, 28, 28), 0.5).eval()
    example = torch.stack([data.val[i][0] for i in range(16)])
    ctx = StageContext(profile, load_target("host-cpu"), data, teacher, RunFolder(tmp_path / "run").create(), example,
                       fingerprint="test")
    student = create_model("edgekd_cnn", 10, (1, 28, 28), 0.5)
    fresh = {k: v.clone() for k, v in student.state_dict().items()}
    monkeypatch.setattr(distill, "DIVERGED_RATIO", 0.5)  # every finished run ends above half its best
    starts = []
    real_fit = distill.fit

    def watched_fit(model, *args, **kwargs):  # the real training, with the weights it starts from noted
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(distill, "fit", watched_fit)
    out = DistillStage().run(student, ctx)
    guard = out.details["divergence_guard"]
    lrs = [a["lr"] for a in guard["attempts"]]
    assert lrs == [smoke.distill.lr * distill.RETRY_LR_FACTOR ** i for i in range(distill.MAX_ATTEMPTS)]
    assert all(a["diverged"] and len(a["epoch_losses"]) == 4 for a in guard["attempts"])
    assert guard["kept_lr"] == lrs[-1] and out.details["lr"] == lrs[-1] and guard["still_diverged"]
    assert len(starts) == distill.MAX_ATTEMPTS  # every attempt trained the fresh student, not the last one's
    assert all(torch.equal(start[k], fresh[k]) for start in starts for k in fresh)
    assert any(not torch.equal(fresh[k], v) for k, v in out.model.state_dict().items())  # it trained
    for attempt in range(distill.MAX_ATTEMPTS):  # each attempt resumable from its own progress file
        assert ctx.progress("distill" if attempt == 0 else f"distill-retry{attempt}").is_file()
