"""The release stage: export, scan, manifest, verify, push."""
