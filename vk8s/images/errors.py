"""Errors of the image builds."""


class ImageBuildError(RuntimeError):
    """An image cannot be built: an input is missing or a build step failed; the message names it."""
