"""Stages: async functions over typed records (respond today; revise, label, score next)."""

from charter.stages.respond import RespondConfig, respond

__all__ = ["RespondConfig", "respond"]
