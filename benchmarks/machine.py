"""What every benchmark prints beside its figures: the machine they were measured on."""

import os
import re


def cpu_line():
    """Cores, the CPU's AVX-512 and AMX flags, and the load: what the figures depend on."""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = sorted(set(re.findall(r"\b(?:avx512\w*|amx\w*)", f.read())))
    return (f"CPU: {os.cpu_count()} cores, AVX-512/AMX: {' '.join(flags) or 'none'}; "
            f"load average {os.getloadavg()[0]:.2f}")
