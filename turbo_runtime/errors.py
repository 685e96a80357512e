"""Project exceptions: one type per concern, each message one line that says what to do."""


class TurboError(Exception):
    """Base class: the CLIs print the message and exit with code 2, without a traceback."""

    exit_code = 2


class InputError(TurboError):
    """A user-supplied value (prompt, shape, steps, strength, image, flag) is not acceptable."""


class ArtifactError(TurboError):
    """Exported artifacts are missing, incomplete, modified or do not match the request."""


class MissingDependency(TurboError):
    """An optional package is not installed; the message names the extra that brings it."""


class BackendUnavailable(MissingDependency):
    """The backend's package is not installed or the requested device cannot be used."""


class SourceError(TurboError):
    """The model source (hub id, folder, replica) cannot be resolved or fails its lock check."""


class HealthError(TurboError):
    """A served pipeline cannot generate: its worker stopped, hangs, or its self-test fails (a cluster replaces it)."""


class ClusterError(TurboError):
    """Ray Serve could not start, reach or keep the replicas of a deployment."""


class ParityError(TurboError):
    """An exported component disagrees with PyTorch beyond the tolerance of its precision."""

    exit_code = 1
