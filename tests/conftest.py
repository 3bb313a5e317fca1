import os

import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU.
# It must be set before triton is first imported, hence here, at collection start.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mts_kernels  # noqa: E402,F401

# `make test-asan` runs this suite against the sanitizer build in build-asan/: make
# sure that is the package imported, not the in-place build.
_expected = os.environ.get("MTS_KERNELS_EXPECT_PACKAGE")
if _expected and not os.path.abspath(mts_kernels.__file__).startswith(os.path.abspath(_expected)):
    raise RuntimeError(f"imported {mts_kernels.__file__}, expected the package under {_expected}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    # Tests choose backends explicitly; a developer's MTS_KERNELS_BACKEND must not leak in.
    monkeypatch.delenv("MTS_KERNELS_BACKEND", raising=False)
