"""Names the machine a benchmark ran on (stdlib only: the renderer's Blender environment has no torch)."""

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def refuse_bad_arguments(parser, *, device=None, resolutions=(), counts=()) -> None:
    """The benchmarks' argument checks, each an argparse error (usage and one line) instead of a traceback from deep
    in a run: `device` must be one this machine has (pipeline_shadow.check_device), every value of each
    (flag, values) in `resolutions` a processing size (check_resolution), each (flag, value) in `counts` >= 1."""
    for flag, value in counts:
        if value < 1:
            parser.error(f"`{flag}` must be >= 1, got {value}.")
    if device is None and not resolutions:
        return
    from pipeline_shadow import check_device, check_resolution  # torch: imported only by the scripts that have it

    try:
        if device is not None:
            check_device(device)
        for flag, values in resolutions:
            for value in values:
                check_resolution(value, flag)
    except ValueError as error:
        parser.error(str(error))
