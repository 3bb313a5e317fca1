"""Packaging: a build made for another torch or CUDA is refused with a clear
message (never loaded), and the sdist -> wheel -> fresh virtual environment path
works from outside the source tree (slow).

Every import of mts_kernels here happens in a subprocess: the test process has
already loaded the in-place build, and a refused or fallback import must be seen
from a clean interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _mm(version):
    """'2.14' of '2.14.1+cu130'."""
    return ".".join(version.split("+")[0].split(".")[:2])


TORCH_MM = _mm(torch.__version__)
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MTS_KERNELS_BACKEND", "TRITON_INTERPRET")}
    # No GPU in the child, whatever this machine has: the fallback decisions below
    # are about "no GPU"; the GPU case is simulated explicitly.
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(overrides)
    return env


def _run(args, *, cwd, env, timeout=300):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- mismatched builds

_PROBE = textwrap.dedent("""
    import json, sys, warnings
    # An editable install of the source tree (what `make test` does) adds import
    # hooks that resolve mts_kernels' submodules in the source tree, whatever
    # PYTHONPATH says; the copy under test must be the only mts_kernels in sight.
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()
    {pre}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import mts_kernels
        except ImportError as e:
            print(json.dumps({{"error": str(e), "loaded_C": "mts_kernels._C" in sys.modules}}))
            sys.exit(0)
    from mts_kernels import _extension
    print(json.dumps({{
        "file": mts_kernels.__file__,
        "loaded_C": "mts_kernels._C" in sys.modules,
        "compiled": _extension.COMPILED,
        "fallback": _extension.FALLBACK,
        "warnings": [str(w.message) for w in caught
                     if issubclass(w.category, _extension.CompiledKernelsUnavailableWarning)],
    }}))
""")


def _fake_install(tmp_path, build_info):
    """A copy of the package whose _build_info says `build_info` (None: no _build_info,
    i.e. never compiled). The copy keeps whatever _C the source tree has: the point is
    that a mismatched one is never loaded."""
    dst = tmp_path / "site"
    shutil.copytree(ROOT / "mts_kernels", dst / "mts_kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "_build_info.py"))
    if build_info is not None:
        (dst / "mts_kernels" / "_build_info.py").write_text(f"BUILD_INFO = {build_info!r}\n")
    return dst


def _build_info(**overrides):
    info = {"version": "0.1.0+cpu.torch" + TORCH_MM, "torch": torch.__version__, "torch_cuda": None,
            "nvcc": None, "cuda_archs": [], "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
            "python": "3.11.7", "py_limited_api": "cp310", "platform": "test"}
    info.update(overrides)
    return info


def _probe(tmp_path, build_info, pre="", **env):
    site_dir = _fake_install(tmp_path, build_info)
    proc = _run([sys.executable, "-c", _PROBE.format(pre=pre)], cwd=tmp_path,
                env=_env(PYTHONPATH=str(site_dir), **env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "file" in out:
        assert out["file"].startswith(str(site_dir)), out["file"]
    return out, site_dir


OLD_TORCH = _build_info(version="0.1.0+cu128.torch2.13", torch="2.13.0+cu128", torch_cuda="12.8",
                        cuda_archs=["sm_80", "sm_90", "compute_90"])


def test_mismatched_torch_without_fallback_raises(tmp_path):
    out, _ = _probe(tmp_path, OLD_TORCH, TRITON_INTERPRET="0")
    assert "error" in out, out
    msg = out["error"]
    assert "torch 2.13.0+cu128" in msg and f"torch {torch.__version__}" in msg, msg
    assert "pip install --no-build-isolation" in msg, msg
    assert "Triton cannot serve" in msg, msg
    assert not out["loaded_C"]


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch to mismatch its CUDA")
def test_mismatched_cuda_without_fallback_raises(tmp_path):
    out, _ = _probe(tmp_path, _build_info(torch_cuda="11.8", cuda_archs=["sm_80"]), TRITON_INTERPRET="0")
    assert "error" in out, out
    assert "CUDA 11.8" in out["error"] and f"CUDA {torch.version.cuda}" in out["error"], out["error"]
    assert not out["loaded_C"]


# A stable-ABI build (what setup.py writes once STABLE_ABI is on) made against an
# older torch: the copied _C is the in-place build, loadable here, so acceptance
# shows as a loaded _C and refusal as an error that never loaded it.
_STABLE_CUDA = torch.version.cuda or "13.0"
STABLE_OLDER_TORCH = _build_info(
    version=f"0.1.0+cu{_STABLE_CUDA.replace('.', '')}.stableabi.torch2.11", torch="2.11.0",
    torch_cuda=torch.version.cuda, stable_abi=True, torch_target="2.11")


def test_stable_abi_build_loads_under_newer_torch(tmp_path):
    out, _ = _probe(tmp_path, STABLE_OLDER_TORCH, TRITON_INTERPRET="0")
    assert "error" not in out, out
    assert out["loaded_C"] and out["compiled"] and not out["warnings"], out


def test_stable_abi_build_for_newer_torch_raises(tmp_path):
    info = dict(STABLE_OLDER_TORCH, torch="2.99.0", torch_target="2.99")
    out, _ = _probe(tmp_path, info, TRITON_INTERPRET="0")
    assert "error" in out, out
    msg = out["error"]
    assert f"torch {TORCH_MM} is older than torch 2.99" in msg, msg
    assert "stable ABI: torch >= 2.99" in msg, msg
    assert not out["loaded_C"]


def test_without_stable_abi_an_older_torch_still_raises(tmp_path):
    other = "2.10" if TORCH_MM == "2.11" else "2.11"  # any minor but the running one
    info = dict(STABLE_OLDER_TORCH, stable_abi=False, torch_target=None, torch=f"{other}.0")
    out, _ = _probe(tmp_path, info, TRITON_INTERPRET="0")
    assert "error" in out and f"torch {other} != torch {TORCH_MM}" in out["error"], out
    assert not out["loaded_C"]


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch to mismatch its CUDA")
def test_stable_abi_build_accepts_cuda_minor_refuses_major(tmp_path):
    major, minor = (int(p) for p in torch.version.cuda.split(".")[:2])
    out, _ = _probe(tmp_path / "minor", dict(STABLE_OLDER_TORCH, torch_cuda=f"{major}.{minor + 1}"),
                    TRITON_INTERPRET="0")
    assert "error" not in out and out["loaded_C"], out
    out, _ = _probe(tmp_path / "major", dict(STABLE_OLDER_TORCH, torch_cuda=f"{major - 1}.8"),
                    TRITON_INTERPRET="0")
    assert "error" in out and "differ in major version" in out["error"], out
    assert not out["loaded_C"]


def test_never_compiled_without_fallback_raises(tmp_path):
    out, _ = _probe(tmp_path, None, TRITON_INTERPRET="0")
    assert "error" in out and "not compiled" in out["error"], out
    assert "pip install --no-build-isolation" in out["error"]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_mismatch_with_triton_interpreter_imports_and_warns(tmp_path):
    out, site_dir = _probe(tmp_path, OLD_TORCH, TRITON_INTERPRET="1")
    assert "error" not in out, out
    assert not out["loaded_C"] and not out["compiled"]
    assert len(out["warnings"]) == 1, out
    msg = out["warnings"][0]
    assert "torch 2.13.0+cu128" in msg and f"torch {torch.__version__}" in msg, msg
    assert "Triton" in msg and "TRITON_INTERPRET=1" in msg, msg

    # The fallback really runs, and `info` reports the state.
    env = _env(PYTHONPATH=str(site_dir), TRITON_INTERPRET="1")
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("ignore")
        import torch, mts_kernels
        g = torch.Generator().manual_seed(0)
        v, alpha = torch.randn(2, 9, 4, generator=g), torch.rand(2, 9, 4, generator=g)
        torch.testing.assert_close(mts_kernels.leaky_integrate(v, alpha, backend="triton"),
                                   mts_kernels.reference.leaky_integrate(v, alpha))
        print("ok")
    """)
    proc = _run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
    proc = _run([sys.executable, "-m", "mts_kernels", "info", "--json"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["built_against"]["torch"] == "2.13.0+cu128"
    assert info["running"]["torch"] == torch.__version__
    assert "2.13.0+cu128" in info["compiled_kernels"] and info["fallback"]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_mismatch_with_gpu_and_triton_imports_and_warns(tmp_path):
    # A GPU, simulated: the decision only asks torch.cuda.is_available().
    out, _ = _probe(tmp_path, OLD_TORCH, pre="import torch; torch.cuda.is_available = lambda: True",
                    TRITON_INTERPRET="0")
    assert "error" not in out, out
    assert len(out["warnings"]) == 1 and "runs CUDA tensors" in out["warnings"][0], out
    assert not out["loaded_C"]


def test_mismatch_with_reference_backend_imports_and_warns(tmp_path):
    out, site_dir = _probe(tmp_path, OLD_TORCH, TRITON_INTERPRET="0", MTS_KERNELS_BACKEND="reference")
    assert "error" not in out, out
    assert len(out["warnings"]) == 1 and "reference" in out["warnings"][0], out
    # ... which is how `info` can still be run on a broken install.
    proc = _run([sys.executable, "-m", "mts_kernels", "info"], cwd=tmp_path,
                env=_env(PYTHONPATH=str(site_dir), TRITON_INTERPRET="0", MTS_KERNELS_BACKEND="reference"))
    assert proc.returncode == 0, proc.stderr
    assert "2.13.0+cu128" in proc.stdout and "fallback:" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- sdist -> wheel -> venv

STABLE_TAG = "stableabi.torch2.11"  # the oldest torch the stable-ABI build serves
OLDEST_TORCH = "2.11.0"


@pytest.fixture(scope="module")
def cpu_wheel(tmp_path_factory):
    """`make sdist`, then `make wheel` from it (CPU kernels only); the wheel's path."""
    dist = tmp_path_factory.mktemp("dist")
    proc = _run([sys.executable, "-c", f"from setuptools import build_meta as b; "
                 f"print(b.build_sdist({str(dist)!r}))"], cwd=ROOT, env=_env())
    assert proc.returncode == 0, _failure(proc)
    sdists = list(dist.glob("mts_kernels-*.tar.gz"))
    assert [p.name for p in sdists] == ["mts_kernels-0.1.0.tar.gz"]
    # from the sdist, as `make wheel` does: proves the sdist builds
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                 "--no-cache-dir", "-w", str(dist), str(sdists[0])], cwd=dist,
                env=_env(MTS_KERNELS_SKIP_CUDA_BUILD="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2")),
                timeout=1200)
    assert proc.returncode == 0, _failure(proc)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


# Run from outside the source tree by the installed package.
_INSTALLED_CHECK = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("error")  # a working install imports without warnings
    import torch, mts_kernels
    from mts_kernels import _extension
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 17, 5, generator=g, requires_grad=True)
    alpha = (torch.rand(5, generator=g) * 0.9 + 0.05).requires_grad_()
    h0 = torch.randn(3, 5, generator=g)
    h = mts_kernels.leaky_integrate(v, alpha, h0, backend="cpu")
    ref = mts_kernels.reference.leaky_integrate(v, alpha, h0)
    torch.testing.assert_close(h, ref)
    gh = torch.randn_like(h)
    torch.testing.assert_close(torch.autograd.grad(h, (v, alpha), gh),
                               torch.autograd.grad(ref, (v, alpha), gh))
    # and the dense recurrence, whose CPU loop calls torch's BLAS through the C shim
    p = torch.randn(9, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    a = torch.rand(6, generator=g, dtype=torch.float64).requires_grad_()
    out = mts_kernels.leaky_rnn(p, w, alpha=a, backend="cpu")
    ref = mts_kernels.reference.leaky_rnn(p, w, alpha=a)
    torch.testing.assert_close(out, ref)
    go = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (p, w, a), go),
                               torch.autograd.grad(ref, (p, w, a), go))
    print(json.dumps({"file": mts_kernels.__file__, "version": mts_kernels.__version__,
                      "compiled": _extension.COMPILED, "torch": torch.__version__}))
""")


def _check_installed(vpy, venv_site, outside, built_torch=torch.__version__):
    outside.mkdir()
    proc = _run([str(vpy), "-c", _INSTALLED_CHECK], cwd=outside, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(venv_site)), out
    assert out["compiled"] and out["version"] == f"0.1.0+cpu.{STABLE_TAG}", out
    proc = _run([str(vpy), "-m", "mts_kernels", "info"], cwd=outside, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert f"mts_kernels 0.1.0+cpu.{STABLE_TAG}" in proc.stdout and "compiled:      loaded" in proc.stdout
    proc = _run([str(vpy), "-m", "mts_kernels", "info", "--json"], cwd=outside, env=_env())
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["version"] == f"0.1.0+cpu.{STABLE_TAG}"
    assert info["compiled_kernels"] == "loaded" and info["fallback"] is None
    assert info["built_against"]["torch"] == built_torch
    assert info["built_against"]["stable_abi"] and info["built_against"]["torch_target"] == "2.11"
    assert info["built_against"]["cuda_archs"] == [] and info["built_against"]["py_limited_api"] == "cp310"
    assert info["location"] == str(venv_site / "mts_kernels")
    assert info["backends"]["cpu"]["auto"] == "cpu"
    return out, info


def _venv(path):
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent, env=_env())
    assert proc.returncode == 0, proc.stderr
    vpy = path / "bin" / "python"
    site_dir = Path(_run([str(vpy), "-c", "import site; print(site.getsitepackages()[0])"],
                         cwd=path.parent, env=_env()).stdout.strip())
    return vpy, site_dir


def _failure(proc):
    """A failed pip or build run's message: the compiler's own error lines first (a
    build's traceback pushes them out of any tail of its output), then the tails."""
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    errs = [ln for ln in lines if re.search(r"error:|FAILED:|fatal|Killed|No space left", ln, re.I)]
    return "\n".join(errs[:60]) + "\n--- output tails:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]


def _pip_install(vpy, *args, timeout=300):
    return _run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-cache-dir", *args],
                cwd=vpy.parent, env=_env(), timeout=timeout)


@pytest.mark.slow
def test_wheel_builds_installs_and_runs(cpu_wheel, tmp_path):
    """What `make sdist` and `make wheel` do, then an install into a fresh venv.

    The wheel is CPU-only (MTS_KERNELS_SKIP_CUDA_BUILD=1): the CUDA kernels take
    most of a build's time on CI's 2 cores, and `make test` has just compiled
    them in place anyway (a CUDA compile error fails CI there). What this test
    covers is packaging: the sdist carries everything needed to compile, the
    wheel carries the compiled _C and its _build_info and is named after what it
    was built against, and the installed package runs outside the source tree.
    Takes about two minutes, nearly all of it compiling the CPU kernels.
    """
    assert re.fullmatch(rf"mts_kernels-0\.1\.0\+cpu\.{re.escape(STABLE_TAG)}-cp310-abi3-linux_\w+\.whl",
                        cpu_wheel.name), cpu_wheel.name
    with zipfile.ZipFile(cpu_wheel) as z:
        names = z.namelist()
        build_info = z.read("mts_kernels/_build_info.py").decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert [n for n in names if n.endswith(".so")] == ["mts_kernels/_C.abi3.so"], names
    assert f"'torch': {torch.__version__!r}" in build_info and "'stable_abi': True" in build_info, build_info
    assert "Requires-Dist: torch>=2.11" in metadata, metadata

    # A fresh venv that reuses this interpreter's torch: `venv --system-site-packages`
    # would see the base interpreter's site-packages, not this (virtual) environment's,
    # so a .pth file appends ours. Lines of a .pth only extend sys.path (the .pth files
    # in the appended directory are not run), so an editable install of mts_kernels
    # there stays invisible, and the venv's own site-packages comes first anyway.
    vpy, venv_site = _venv(tmp_path / "venv")
    (venv_site / "_reuse_torch.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = _pip_install(vpy, "--no-deps", "--no-index", str(cpu_wheel))
    assert proc.returncode == 0, _failure(proc)
    out, info = _check_installed(vpy, venv_site, tmp_path / "elsewhere")
    assert out["torch"] == torch.__version__ == info["running"]["torch"]


@pytest.mark.slow
def test_stable_abi_wheel_runs_under_the_oldest_torch(cpu_wheel, tmp_path, request):
    """The same wheel, built against this torch's headers, in a venv with torch
    2.11.0 (the oldest the stable-ABI build serves) from the package index: it
    loads and runs there too; and the sdist builds from source against torch
    2.11.0's own headers (C++17, fewer conveniences), as on a machine that has
    only that torch. Skipped where pip cannot get torch 2.11.0 (say, no index),
    with the reason."""
    if TORCH_MM == _mm(OLDEST_TORCH):
        pytest.skip(f"the running torch is already {torch.__version__}")
    vpy, venv_site = _venv(tmp_path / "venv")
    # pytest keeps the last runs' tmp_path directories: not this one's several GB of torch
    request.addfinalizer(lambda: shutil.rmtree(tmp_path / "venv", ignore_errors=True))
    proc = _pip_install(vpy, f"torch=={OLDEST_TORCH}", "numpy", "setuptools", "wheel", "ninja",
                        timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install torch=={OLDEST_TORCH}: {proc.stderr.strip()[-300:]}")
    proc = _pip_install(vpy, "--no-deps", "--no-index", str(cpu_wheel))
    assert proc.returncode == 0, _failure(proc)
    out, info = _check_installed(vpy, venv_site, tmp_path / "run_built_here")
    assert _mm(out["torch"]) == _mm(OLDEST_TORCH) == _mm(info["running"]["torch"]), out

    # from the sdist, compiled in that venv against torch 2.11.0
    dist = tmp_path / "dist211"
    sdist = cpu_wheel.parent / "mts_kernels-0.1.0.tar.gz"
    proc = _run([sys.executable, "-m", "pip", "--python", str(vpy), "wheel", "--no-build-isolation",
                 "--no-deps", "--no-index", "--no-cache-dir", "-w", str(dist), str(sdist)],
                cwd=tmp_path, env=_env(MTS_KERNELS_SKIP_CUDA_BUILD="1",
                                       MAX_JOBS=os.environ.get("MAX_JOBS", "2")), timeout=1200)
    assert proc.returncode == 0, _failure(proc)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name == cpu_wheel.name, wheels
    proc = _pip_install(vpy, "--no-deps", "--no-index", "--force-reinstall", str(wheels[0]))
    assert proc.returncode == 0, _failure(proc)
    _, info = _check_installed(vpy, venv_site, tmp_path / "run_built_there",
                               built_torch=out["torch"])
    assert info["built_against"]["torch"] == info["running"]["torch"] == out["torch"]
