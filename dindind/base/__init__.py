"""The ground floor: errors, config, layout, subprocesses, files, downloads, rendering, the build lock.

Imports nothing else of dindind.
"""
