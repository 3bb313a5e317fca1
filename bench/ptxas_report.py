"""Registers, spills, stack frame and shared memory of every CUDA kernel, from ptxas -v.

    python bench/ptxas_report.py [--arch 90] [--root REPO] [FILE.cu ...]

Each .cu under csrc/ (or the files named, relative to the repo root) is
compiled as setup.py compiles it, for one architecture, with the object thrown
away; no GPU needed, only nvcc (CUDA_HOME, else nvcc on PATH, else
/usr/local/cuda) and this Python's torch headers. One line per kernel:
registers, spill stores / loads and stack frame (bytes), static shared memory,
and the demangled name. Run it on two trees (--root) to compare a change.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    return str(Path(os.path.realpath(nvcc)).parent.parent) if nvcc else "/usr/local/cuda"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="90")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("CUDA_HOME", cuda_home())
    from torch.utils.cpp_extension import include_paths

    root = Path(args.root)
    major, minor = map(int, re.search(r"TORCH_TARGET = \((\d+), (\d+)\)",
                                      (root / "setup.py").read_text()).groups())
    target = f"0x{major:02x}{minor:02x}000000000000"
    files = args.files or sorted(str(p.relative_to(root)) for p in root.glob("csrc/*/*.cu"))
    nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    filt = shutil.which("c++filt")
    status = 0
    for f in files:
        print(f"== {f} (sm_{args.arch})", flush=True)
        cmd = [nvcc, "-O3", "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
               "-lineinfo", "-std=c++20",
               f"-gencode=arch=compute_{args.arch},code=sm_{args.arch}",
               f"-DTORCH_TARGET_VERSION={target}", "-DUSE_CUDA", "-DPy_LIMITED_API=0x030a0000",
               *[f"-I{p}" for p in include_paths()], f"-I{sysconfig.get_paths()['include']}",
               "-Xptxas", "-v", "-c", f, "-o", os.devnull]
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        name, stats = None, {}
        for line in (out.stdout + out.stderr).splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                name, stats = m.group(1), {}
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                stats = dict(zip(("frame", "st", "ld"), m.groups()))
                continue
            m = re.search(r"Used (\d+) registers(.*)", line)
            if m and name:
                smem = re.search(r"(\d+) bytes smem", m.group(2))
                pretty = name
                if filt:
                    pretty = subprocess.run([filt, name], capture_output=True, text=True).stdout.strip()
                print(f"  regs {m.group(1):>3}  spill {stats.get('st', '?')}/{stats.get('ld', '?')}"
                      f"  frame {stats.get('frame', '?')}  smem {smem.group(1) if smem else 0:>5}"
                      f"  {pretty[:160]}")
                name = None
            elif re.search(r"\b(error|warning)\b", line):
                print("  " + line)
        if out.returncode != 0:
            print(f"  nvcc exit {out.returncode}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
