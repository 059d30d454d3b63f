"""Errors that carry every fault found, each with the key path or node it belongs to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One fault: where it is (a config key path or a node id, plus an optional field) and what is wrong."""

    where: str
    message: str
    field: str = ""

    def __str__(self) -> str:
        loc = f"{self.where}.{self.field}" if self.field else self.where
        return f"{loc}: {self.message}"


class _IssuesError(Exception):
    title = "invalid"

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.title} ({len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}):"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)


class ConfigError(_IssuesError):
    """The flat config (or a file it names) is invalid. Exit code 2."""

    title = "invalid config"


class GraphError(_IssuesError):
    """The stage graph is invalid. Exit code 2."""

    title = "invalid graph"


class RunError(RuntimeError):
    """A failure while running (bad data, non-finite loss, ...). Exit code 1."""
