"""What every stage shares: params, errors, safe file I/O, entry points, devices and determinism.

Nothing here imports torch at module level: the download and normalize stages use it too.
"""
