"""Stages: async functions over typed records, one record in, one out; each module also
declares its options and its ``SPEC`` (``charter.registry`` lists them)."""
