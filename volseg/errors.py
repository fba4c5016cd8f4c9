"""One exception family, so the CLI can turn any bad input into one clear line and exit code 2."""


class VolsegError(Exception):
    """Base class: every problem a user can cause, with a message that names it."""


class InputError(VolsegError):
    """A missing, corrupt or unsupported input file, or an array with NaN/Inf."""


class GeometryError(VolsegError):
    """Two images that should share a voxel grid do not."""


class ClickError(VolsegError):
    """A click outside the image, with NaN, the wrong number of coordinates or an unknown label."""


class MemoryBudgetError(VolsegError):
    """A job whose estimated memory exceeds the configured budget."""


class OutputExistsError(VolsegError):
    """An output already exists and --overwrite was not given, or an output would replace an input."""


class OutputError(VolsegError):
    """An output that could not be written: its folder refused the file, or the disk filled up mid-write."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt so that the same cleanup runs (a batch
    writes its report, temporary files and claims are removed)."""
