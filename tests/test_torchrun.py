"""The training stages under PyTorch's own torchrun: 2 CPU processes, Gloo, one report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgekd.config import PROFILES_DIR
from tests.conftest import REPO


def test_two_process_torchrun_trains_and_writes_one_report(tmp_path, cache_dir, smoke_run):
    profile = tmp_path / "ddp.toml"
    profile.write_text((PROFILES_DIR / "smoke.toml").read_text()
                       .replace("epochs = 2\nlr = 0.2\ntemperature", "epochs = 3\nlr = 0.2\ntemperature"))
    run_dir = tmp_path / "run"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "edgekd", "compress",
         "--profile", str(profile), "--target", "host-cpu", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)],
        cwd=REPO, env={**os.environ, "EDGEKD_QUIET": "1"}, capture_output=True, text=True, timeout=600,
    )
    reports = list(tmp_path.rglob("report.json"))
    assert reports == [run_dir / "report.json"], done.stderr[-3000:]
    report = json.loads(reports[0].read_text())
    # every rank exits 3 on a missed budget, which torchrun itself reports as a failure (exit 1)
    assert (done.returncode == 0) == report["budget"]["met"], done.stderr[-3000:]
    assert done.stdout.count("edgekd: ") == 1, "only rank 0 prints the final table"
    stages = {s["name"]: s for s in report["stages"]}
    losses = stages["distill"]["details"]["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert stages["distill"]["accuracy"] > 0.2  # ten classes: chance is 0.1
    assert stages["quantize"]["accuracy"] > 0.2
