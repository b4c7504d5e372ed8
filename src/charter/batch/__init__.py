"""Batch mode (``--batch``): a stage's requests sent through a provider's batch API at its
batch price, recorded before the run waits so that nothing is ever paid for twice."""
