"""Errors of the testbed (kept apart so the CLI can catch them without loading the supervisor)."""


class TestbedError(RuntimeError):
    """The testbed cannot start or is in the way."""


class AlreadyRunning(TestbedError):
    pass


class ComponentFailed(TestbedError):
    pass
