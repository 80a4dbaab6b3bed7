"""How Debian's PyTorch reaches OpenBLAS, shared by the PyTorch benchmarks: which OpenBLAS this
process loaded, which kernel set it runs, and one thread count for torch and OpenBLAS alike."""
import ctypes

import torch


def loaded_openblas():
    """The OpenBLAS this process loaded (Debian's torch reaches it through libblas.so.3), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libopenblas" in line:
                return line.split()[-1]
    return None


def openblas_core():
    """OpenBLAS's kernel set in this process (OPENBLAS_CORETYPE chooses it), or None."""
    if not loaded_openblas():
        return None
    corename = ctypes.CDLL(loaded_openblas()).openblas_get_corename
    corename.restype = ctypes.c_char_p
    return corename().decode()


def set_threads(threads):
    """torch.set_num_threads, and the same count for OpenBLAS: Debian's torch is built against a
    generic BLAS and does not tell OpenBLAS, whose pthread flavour would otherwise use every core."""
    torch.set_num_threads(threads)
    if loaded_openblas():
        ctypes.CDLL(loaded_openblas()).openblas_set_num_threads(threads)
