"""charter's rewards inside other RL engines: ``charter.integrations.trl`` (reward functions
for TRL's GRPOTrainer) and ``charter.integrations.verl`` (verl's custom reward function), both
clients of ``charter serve``; OpenRLHF calls the server itself (``--remote_rm_url``)."""
