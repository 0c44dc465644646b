"""Errors of the local stack: each says what is wrong and, where a service failed, shows its log."""

from __future__ import annotations


class StackError(Exception):
    """A stack operation that could not be done; the message is meant for a person."""

    def __init__(self, message: str, log_tail: str | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail

    def describe(self) -> str:
        text = str(self)
        if self.log_tail:
            text += "\n--- last lines of its log ---\n" + self.log_tail.rstrip()
        return text


class MissingToolError(StackError):
    """Java or Maven is missing or unsuitable."""


class PortTakenError(StackError):
    """Another process already listens on a port a service needs."""


class ServiceStartError(StackError):
    """A service did not come up healthy in time."""
