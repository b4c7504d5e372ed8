"""Stages: async functions over typed records (respond, revise, label, score)."""

from charter.stages.respond import RespondConfig, respond

__all__ = ["RespondConfig", "respond"]
