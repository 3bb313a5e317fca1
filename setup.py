"""Build of mts_kernels._C: C++ CPU kernels always, CUDA kernels when a CUDA
toolkit is found and the installed torch is a CUDA build.

The CUDA decision never looks at torch.cuda.is_available(): wheels for GPUs are
built on machines without one.

Environment switches:
  MTS_KERNELS_SKIP_CUDA_BUILD=1   build the CPU kernels only
  MTS_KERNELS_FORCE_CUDA=1        a missing CUDA toolkit is an error, not a CPU-only build
  MTS_KERNELS_CUDA_ARCHS          default "8.0;8.6;8.9;9.0"; PTX of the newest is added
                                  (append "+PTX" to an entry to choose it yourself)
  MTS_KERNELS_SANITIZE=1          CPU kernels only, with AddressSanitizer and
                                  UndefinedBehaviorSanitizer (`make test-asan`
                                  builds this in build-asan/, never in place)
  MAX_JOBS                        parallel compile jobs (ninja)
  CUDA_HOME                       toolkit root; else the directory of nvcc on PATH,
                                  else /usr/local/cuda

Versions and ABI (README, "Wheels and installs"):
  - every host source is written against torch's stable ABI (torch/csrc/stable,
    torch/headeronly and the C shims; csrc/stable_util.h) and compiled with
    -DTORCH_TARGET_VERSION=<TORCH_TARGET>, so the binary loads under any torch >=
    TORCH_TARGET (2.11): the local version names the kernels and that floor,
    0.1.0+cu130.stableabi.torch2.11 (CUDA kernels built with CUDA 13.0) or
    0.1.0+cpu.stableabi.torch2.11, and the wheel requires torch>=2.11 (with the same
    CUDA major for the CUDA kernels). An sdist is plain 0.1.0: what it builds into is
    decided on the machine that builds it.
  - _C uses only Python's limited API (its PyInit__C is an empty module; the ops
    reach Python through the torch dispatcher), so the wheel is tagged
    cp310-abi3 and one wheel serves every CPython >= 3.10.
  - mts_kernels/_build_info.py is written next to the compiled _C at build time
    (never at setup.py parse time, so an sdist or a wheel built from this tree
    leaves the in-place build's record alone); mts_kernels/_extension.py reads it
    to refuse a build made for another torch or CUDA before loading it.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

BASE_VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0"
# Oldest CPython the abi3 wheel serves; the same value torch's cpp_extension
# defines as Py_LIMITED_API for py_limited_api=True extensions.
PY_LIMITED_API = "cp310"
# An sdist carries no binary: its version has no local tag (pip checks that an
# sdist's file name and the metadata it builds agree, and the tag is only known
# where it is built).
BUILDING_SDIST = "sdist" in sys.argv[1:]

# Oldest torch the stable-ABI sources target (they use from_blob with a deleter, 2.11).
TORCH_TARGET = (2, 11)
# torch/headeronly/version.h layout: major and minor in the top two bytes.
TORCH_TARGET_VERSION = f"0x{TORCH_TARGET[0]:02x}{TORCH_TARGET[1]:02x}000000000000"
# Every host source targets the stable ABI (checked by csrc/stable_util.h, which
# refuses to compile without TORCH_TARGET_VERSION).
STABLE_ABI = True


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

TORCH_MM = ".".join(torch.__version__.split("+")[0].split(".")[:2])


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g"]


def _want_cuda():
    if _truthy("MTS_KERNELS_SANITIZE"):
        return False  # the sanitizer build checks the CPU kernels
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
    # The torch tag names the oldest torch the stable-ABI binary serves (a plain
    # "+cpu" would hide that floor).
    kernels = "cu" + torch.version.cuda.replace(".", "") if with_cuda else "cpu"
    return f"{kernels}.stableabi.torch{TORCH_TARGET[0]}.{TORCH_TARGET[1]}"


def _nvcc_version():
    try:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _build_info(with_cuda, arch_names):
    return {
        "version": f"{BASE_VERSION}+{_local_version(with_cuda)}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda if with_cuda else None,
        "nvcc": _nvcc_version() if with_cuda else None,
        "cuda_archs": arch_names,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": platform.python_version(),
        "py_limited_api": PY_LIMITED_API,
        "platform": platform.platform(),
        # Read by mts_kernels/_extension.py: a stable-ABI build runs under any torch
        # >= torch_target with the same CUDA major, not just the torch it was built with.
        "stable_abi": STABLE_ABI,
        "torch_target": "{}.{}".format(*TORCH_TARGET),
    }


def _extension():
    # No -std flag: torch adds the standard its own headers need.
    # py_limited_api=True: torch's BuildExtension defines Py_LIMITED_API and does not
    # link libtorch_python; setuptools names the module _C.abi3.so.
    cxx = ["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]
    macros = [("TORCH_TARGET_VERSION", TORCH_TARGET_VERSION)]
    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    if BUILDING_SDIST:
        # Nothing is compiled; MANIFEST.in brings all of csrc/ along.
        return CppExtension("mts_kernels._C", sources, py_limited_api=True), False, None
    with_cuda = _want_cuda()
    if not with_cuda:
        link = []
        if _truthy("MTS_KERNELS_SANITIZE"):
            cxx, link = cxx + SANITIZE, list(SANITIZE)
        ext = CppExtension("mts_kernels._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=link, define_macros=macros, py_limited_api=True)
        return ext, False, _build_info(False, [])
    gencode, arch_names = _gencode_flags(os.environ.get("MTS_KERNELS_CUDA_ARCHS", DEFAULT_ARCHS))
    sources += sorted(glob.glob("csrc/*/*_cuda.cpp")) + sorted(glob.glob("csrc/*/*.cu"))
    nvcc = [
        "-O3",
        "--Werror", "all-warnings",
        "-Xcompiler", "-Wall,-Wextra,-Werror",
        "-lineinfo",
    ] + gencode
    ext = CUDAExtension(
        "mts_kernels._C",
        sources,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        # USE_CUDA: the shim declares its CUDA stream accessor only then.
        define_macros=macros + [("USE_CUDA", None)],
        py_limited_api=True,
    )
    return ext, True, _build_info(True, arch_names)


EXTENSION, WITH_CUDA, BUILD_INFO = _extension()


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension, plus: writes _build_info.py beside the compiled _C
    (in place for editable installs, in build/lib for wheels), and removes _C
    binaries with another ABI suffix there (a leftover _C.cpython-311-*.so would
    be imported before the new _C.abi3.so)."""

    def _info_paths(self):
        return [os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.py")
                for ext in self.extensions]

    def run(self):
        super().run()
        for ext in self.extensions:
            built = self.get_ext_fullpath(ext.name)
            stem = os.path.basename(built).split(".")[0]
            for other in glob.glob(os.path.join(os.path.dirname(built), stem + ".*.so")):
                if os.path.abspath(other) != os.path.abspath(built):
                    os.remove(other)
        for path in self._info_paths():
            with open(path, "w") as f:
                f.write("# Written by setup.py at build time; describes the compiled mts_kernels._C.\n")
                f.write(f"BUILD_INFO = {BUILD_INFO!r}\n")

    def get_outputs(self):
        return super().get_outputs() + self._info_paths()


if BUILDING_SDIST:
    VERSION = BASE_VERSION
else:
    VERSION = BUILD_INFO["version"]
INSTALL_REQUIRES = ["torch>={}.{}".format(*TORCH_TARGET)]

setup(
    name="mts_kernels",
    version=VERSION,
    description="Fused kernels for multiple-time-scale recurrent networks (leaky units, "
    "skip connections through time, clockwork RNNs) for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mts_kernels", "mts_kernels.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": PY_LIMITED_API}},
    zip_safe=False,
)
