"""Training the transformer: losses, optimisers, the loop, playlist continuation, CLI functions.

Import submodules directly (segue.training.trainer etc.); this package imports nothing heavy.
"""
