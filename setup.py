"""Build of mts_kernels._C: C++ CPU kernels always, CUDA kernels when a CUDA
toolkit is found and the installed torch is a CUDA build.

The CUDA decision never looks at torch.cuda.is_available(): wheels for GPUs are
built on machines without one.

Environment switches:
  MTS_KERNELS_SKIP_CUDA_BUILD=1   build the CPU kernels only
  MTS_KERNELS_FORCE_CUDA=1        a missing CUDA toolkit is an error, not a CPU-only build
  MTS_KERNELS_CUDA_ARCHS          default "8.0;8.6;8.9;9.0"; PTX of the newest is added
                                  (append "+PTX" to an entry to choose it yourself)
  MAX_JOBS                        parallel compile jobs (ninja)
  CUDA_HOME                       toolkit root; else the directory of nvcc on PATH,
                                  else /usr/local/cuda
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

BASE_VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0"


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit(root):
    return bool(root) and all(
        os.path.exists(os.path.join(root, *parts))
        for parts in (("bin", "nvcc"), ("include", "cuda_runtime_api.h"))
    )


def _find_cuda_home():
    """The CUDA toolkit root, or None. Set before torch.utils.cpp_extension is
    imported: its own guess (the parent of the nvcc on PATH) is /usr/local where
    /usr/local/bin/nvcc is a wrapper script, which has no CUDA headers."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            if _is_toolkit(os.environ[var]):
                return os.environ[var]
            sys.exit(f"{var}={os.environ[var]} is not a CUDA toolkit (no bin/nvcc and include/)")
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if _is_toolkit(c)), None)


CUDA_HOME = _find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if _truthy("MTS_KERNELS_SKIP_CUDA_BUILD"):
        if _truthy("MTS_KERNELS_FORCE_CUDA"):
            sys.exit("MTS_KERNELS_FORCE_CUDA=1 and MTS_KERNELS_SKIP_CUDA_BUILD=1 contradict each other")
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"the installed torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None:
        problems.append("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
    if problems:
        if _truthy("MTS_KERNELS_FORCE_CUDA"):
            sys.exit("MTS_KERNELS_FORCE_CUDA=1 but " + "; ".join(problems))
        print("mts_kernels: building the CPU kernels only: " + "; ".join(problems), file=sys.stderr)
        return False
    return True


def _gencode_flags(spec):
    """-gencode flags for a ';'-separated list like '8.0;8.6;9.0' (PTX of the newest
    is added unless some entry already says +PTX)."""
    archs = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    if not archs:
        sys.exit(f"MTS_KERNELS_CUDA_ARCHS={spec!r} names no architecture")
    if not any(a.endswith("+PTX") for a in archs):
        newest = max(archs, key=lambda a: float(a))
        archs = [a for a in archs if a != newest] + [newest + "+PTX"]
    flags, names = [], []
    for a in archs:
        ptx = a.endswith("+PTX")
        num = a.removesuffix("+PTX").replace(".", "")
        if not num.isdigit():
            sys.exit(f"MTS_KERNELS_CUDA_ARCHS: {a!r} is not an architecture like 8.0 or 9.0+PTX")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        names.append(f"sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
            names.append(f"compute_{num}")
    return flags, names


def _local_version(with_cuda):
    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if with_cuda:
        cu = "cu" + torch.version.cuda.replace(".", "")
        return f"{cu}.torch{torch_mm}"
    return f"cpu.torch{torch_mm}"


def _write_build_info(with_cuda, arch_names):
    info = {
        "version": f"{BASE_VERSION}+{_local_version(with_cuda)}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda if with_cuda else None,
        "cuda_archs": arch_names,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    path = os.path.join(ROOT, "mts_kernels", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time; describes the compiled mts_kernels._C.\n")
        f.write(f"BUILD_INFO = {info!r}\n")


def _extension():
    # No -std flag: torch adds the standard its own headers need.
    with_cuda = _want_cuda()
    cxx = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]
    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    arch_names = []
    if not with_cuda:
        _write_build_info(False, arch_names)
        return CppExtension("mts_kernels._C", sources, extra_compile_args={"cxx": cxx}), False
    gencode, arch_names = _gencode_flags(os.environ.get("MTS_KERNELS_CUDA_ARCHS", DEFAULT_ARCHS))
    sources += sorted(glob.glob("csrc/*/*_cuda.cpp")) + sorted(glob.glob("csrc/*/*.cu"))
    nvcc = [
        "-O3",
        "--Werror", "all-warnings",
        "-Xcompiler", "-Wall,-Wextra,-Werror",
        "-lineinfo",
    ] + gencode
    _write_build_info(True, arch_names)
    ext = CUDAExtension(
        "mts_kernels._C",
        sources,
        extra_compile_args={"cxx": cxx + ["-DMTS_WITH_CUDA"], "nvcc": nvcc},
    )
    return ext, True


EXTENSION, WITH_CUDA = _extension()

setup(
    name="mts_kernels",
    version=f"{BASE_VERSION}+{_local_version(WITH_CUDA)}",
    description="Fused kernels for multiple-time-scale recurrent networks (leaky units, "
    "skip connections through time, clockwork RNNs) for PyTorch",
    packages=find_packages(include=["mts_kernels", "mts_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
