"""The normalize stage: split a dataset and scale it with training statistics (prepare.py),
into the processed-data store that every later stage reads (store.py)."""
