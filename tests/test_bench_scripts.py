"""The non-GPU parts of the GPU machine's scripts (bench/gpu_check.sh runs them there):
their CPU dry runs, and the prebuilt extension's source stamp."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_peers_dry_run(tmp_path):
    r = _run("bench/peers.py", "--dry-run", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "peers.json").read_text())["rows"]
    ours = [x for x in rows if x["impl"].startswith("ours")]
    assert ours and all(x["status"] == "ok" for x in ours), ours
    # Every planned peer either ran its check or says why it was skipped.
    for x in rows:
        assert x["status"] in ("ok", "skipped"), x
        assert x["status"] == "ok" or x["reason"]
    assert "| ours linear_scan |" in (tmp_path / "peers.md").read_text()


def test_extra_checks_dry_run():
    r = _run("bench/gpu_extra_checks.py", "workload", "--dry-run", "--core")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failure(s)" in r.stdout and r.stdout.count("  ok   ") >= 16


def test_prebuilt_stamp_tracks_sources(tmp_path):
    spec = importlib.util.spec_from_file_location("prebuilt", ROOT / "bench" / "prebuilt.py")
    prebuilt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prebuilt)
    (tmp_path / "csrc" / "scan").mkdir(parents=True)
    (tmp_path / "setup.py").write_text("# setup\n")
    src = tmp_path / "csrc" / "scan" / "k.cu"
    src.write_text("int a;\n")
    info = tmp_path / "_build_info.py"
    info.write_text("BUILD_INFO = {'torch': '2.14'}\n")
    digest = prebuilt.stamp(info, tmp_path)
    prebuilt.stamp(info, tmp_path)  # restamping replaces the line
    scope = prebuilt.read_info(info)
    assert scope["SOURCE_HASH"] == digest == prebuilt.source_hash(tmp_path)
    assert info.read_text().count("SOURCE_HASH") == 1 and scope["BUILD_INFO"] == {"torch": "2.14"}
    src.write_text("int b;\n")
    assert prebuilt.source_hash(tmp_path) != digest
    # Without a GPU, check refuses (and says why) rather than passing.
    import torch

    if not torch.cuda.is_available():
        r = _run("bench/prebuilt.py", "check")
        assert r.returncode == 1 and "not used" in r.stdout, r.stdout + r.stderr
