"""Expected failures: each carries the one clear line a user sees instead of a traceback."""


class DeployError(Exception):
    """A failure the user can act on; `details` are printed as indented lines below it."""

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.details = list(details or [])

    def __str__(self) -> str:
        head = super().__str__()
        return "\n".join([head + (":" if self.details else "")] + [f"  - {d}" for d in self.details])


class ConfigError(DeployError):
    """Bad input, found before any connection opens."""


class ConnectError(DeployError):
    """The host could not be reached, refused us, or presented an unknown key."""


class StepFailed(DeployError):
    """A remote step failed; the old version is still serving. `completed`: the steps that had
    finished (and were undone) before it."""

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message, details)
        self.completed: list[str] = []
        self.undone = True  # False: an undo the others depend on failed; the host needs a repair


class LockHeld(DeployError):
    """Another deploy holds the host's lock."""
