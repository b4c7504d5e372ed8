"""Humans where the AI judge is doubtful: ``route`` picks the pairs, ``annotate`` serves them
to people in a local web page, ``merge`` puts their labels back into the dataset."""
